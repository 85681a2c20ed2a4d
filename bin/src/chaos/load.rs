//! The clients: a bounded, seeded mix of orders down every path of the saga, placed over HTTP
//! at a steady rate, each retried with its Idempotency-Key until it gets an answer, plus
//! customer cancels at random moments (and of every held parcel once it is confirmed).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

const CARD: &str = "4242424242424242";
const DECLINED: &str = "4000000000000002";
const ADDRESS: &str = "1 Chaos Street";

/// The path an order is meant to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    Plain,
    LastUnits,
    FromStore,
    SoldOut,
    Declined,
    Undeliverable,
    /// The carrier holds the parcel; the customer cancels once it is confirmed.
    Held,
    /// A plain order the customer cancels at a random moment.
    Cancelled,
}

/// Weights of the mix, in percent.
const MIX: [(Path, u8); 8] = [
    (Path::Plain, 50),
    (Path::LastUnits, 5),
    (Path::FromStore, 8),
    (Path::SoldOut, 5),
    (Path::Declined, 7),
    (Path::Undeliverable, 7),
    (Path::Held, 8),
    (Path::Cancelled, 10),
];

/// One order as its client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Placed {
    pub n: usize,
    pub path: Path,
    pub idempotency_key: String,
    /// Set once the client got a 2xx: the order the system accepted.
    pub order_id: Option<String>,
    /// The answer that ended the tries (the last status, or none at all).
    pub answer: Option<u16>,
    pub attempts: u32,
    /// The answer to the customer's cancel, if they sent one.
    pub cancel: Option<u16>,
    pub lines: Vec<(String, u32)>,
}

/// Everything the clients saw.
#[derive(Debug, Default)]
pub struct Ledger {
    pub placed: Vec<Placed>,
}

pub type Shared = Arc<Mutex<Ledger>>;

pub fn lock(ledger: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A client of the HTTP API, as the operator.
#[derive(Clone)]
pub struct Client {
    pub http: String,
    web: reqwest::Client,
}

impl Client {
    pub fn new(http: &str, token: &str) -> anyhow::Result<Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
        Ok(Client {
            http: http.to_string(),
            web: reqwest::Client::builder()
                .default_headers(headers)
                .timeout(Duration::from_secs(5))
                .build()?,
        })
    }

    /// One request; `None` when no answer came (refused, reset, timed out).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Option<(u16, Value)> {
        let mut request = self.web.request(method, format!("{}{path}", self.http));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Some((status, body))
    }

    /// Send until a definite answer (not 5xx, 408 or 429) or `until`; the last answer.
    async fn until_answered(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
        until: Instant,
    ) -> (Option<(u16, Value)>, u32) {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let answer = self.send(method.clone(), path, body, key).await;
            let definite = matches!(&answer, Some((s, _)) if *s < 500 && *s != 408 && *s != 429);
            if definite || Instant::now() >= until {
                return (answer, attempts);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Option<(u16, Value)> {
        self.send(reqwest::Method::GET, path, None, None).await
    }

    /// Place an order (until answered, by `until`); its id if accepted.
    pub async fn place(
        &self,
        form: &Value,
        key: &str,
        until: Instant,
    ) -> (Option<(u16, Value)>, u32) {
        self.until_answered(
            reqwest::Method::POST,
            "/orders",
            Some(form),
            Some(key),
            until,
        )
        .await
    }

    pub async fn cancel(&self, order_id: &str, until: Instant) -> Option<u16> {
        let path = format!("/orders/{order_id}/cancel");
        let (answer, _) = self
            .until_answered(reqwest::Method::POST, &path, None, None, until)
            .await;
        answer.map(|(status, _)| status)
    }

    /// The order's status in the read model (`None`: not there, or no answer).
    pub async fn status(&self, order_id: &str) -> Option<String> {
        match self.get(&format!("/orders/{order_id}")).await {
            Some((200, row)) => row["order_status"].as_str().map(str::to_string),
            _ => None,
        }
    }
}

/// Offer `orders` orders at `rate`/s from now; clients keep trying until `until`. Returns once
/// every client is done.
pub async fn drive(
    client: Client,
    seed: u64,
    orders: usize,
    rate: f64,
    until: Instant,
    ledger: Shared,
) {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x00c1_1e47);
    let started = Instant::now();
    let mut clients = Vec::with_capacity(orders);
    for n in 0..orders {
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let path = pick(&mut rng);
        let (form, lines) = form(&mut rng, n, path);
        let cancel_after = Duration::from_millis(rng.u64(0..=4_000));
        let placed = Placed {
            n,
            path,
            idempotency_key: format!("chaos-{seed}-{n}"),
            order_id: None,
            answer: None,
            attempts: 0,
            cancel: None,
            lines,
        };
        let (client, ledger) = (client.clone(), ledger.clone());
        clients.push(actix_rt::spawn(async move {
            let placed = one(&client, placed, &form, cancel_after, until).await;
            lock(&ledger).placed.push(placed);
        }));
    }
    for c in clients {
        let _ = c.await;
    }
}

/// One customer: place, and cancel if that is their path.
async fn one(
    client: &Client,
    mut placed: Placed,
    form: &Value,
    cancel_after: Duration,
    until: Instant,
) -> Placed {
    let (answer, attempts) = client.place(form, &placed.idempotency_key, until).await;
    placed.attempts = attempts;
    placed.answer = answer.as_ref().map(|(s, _)| *s);
    if let Some((200 | 201, body)) = &answer {
        placed.order_id = body["order_id"].as_str().map(str::to_string);
    }
    let Some(id) = placed.order_id.clone() else {
        return placed;
    };
    match placed.path {
        Path::Cancelled => {
            tokio::time::sleep(cancel_after).await;
            placed.cancel = client.cancel(&id, until).await;
        }
        Path::Held => {
            // The parcel never leaves the depot: the customer gives up once it is confirmed.
            while Instant::now() < until {
                match client.status(&id).await.as_deref() {
                    Some("CONFIRMED") => {
                        placed.cancel = client.cancel(&id, until).await;
                        break;
                    }
                    Some("CANCELLED" | "COMPLETED") => break,
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        _ => {}
    }
    placed
}

fn pick(rng: &mut fastrand::Rng) -> Path {
    let mut roll = rng.u8(0..100);
    for (path, weight) in MIX {
        if roll < weight {
            return path;
        }
        roll -= weight;
    }
    Path::Plain
}

/// The order form of path `path`, and its lines.
fn form(rng: &mut fastrand::Rng, n: usize, path: Path) -> (Value, Vec<(String, u32)>) {
    const PLAIN: [&str; 4] = ["SKU-MUG", "SKU-SOCKS", "SKU-TSHIRT", "SKU-HOODIE"];
    let (sku, quantity) = match path {
        Path::LastUnits => ("SKU-LAMP", 1),
        Path::FromStore => ("SKU-POSTER", 1),
        Path::SoldOut => ("SKU-VINYL", 1),
        _ => (PLAIN[rng.usize(..PLAIN.len())], rng.u32(1..=2)),
    };
    let card = if path == Path::Declined {
        DECLINED
    } else {
        CARD
    };
    let address = match path {
        Path::Undeliverable => "9 Undeliverable Road",
        Path::Held => "5 Harbor Road [hold]",
        _ => ADDRESS,
    };
    let mut lines = vec![(sku, quantity)];
    // Half the plain, cancelled and ship-from-store orders have a second line (unless the same
    // SKU is drawn), so that an order's lines span SKU shards (`--partitions`): reserved shard
    // by shard, and given back by line.
    match path {
        Path::Plain | Path::Cancelled if rng.bool() => {
            let other = PLAIN[rng.usize(..PLAIN.len())];
            if other != sku {
                lines.push((other, 1));
            }
        }
        // store-busan has socks too.
        Path::FromStore if rng.bool() => lines.push(("SKU-SOCKS", 1)),
        _ => {}
    }
    let form = json!({
        "customer": format!("chaos-{n}"),
        "lines": lines
            .iter()
            .map(|(sku, quantity)| json!({ "sku": sku, "quantity": quantity }))
            .collect::<Vec<_>>(),
        "card_number": card,
        "shipping_address": address,
    });
    let lines = lines.into_iter().map(|(s, q)| (s.to_string(), q)).collect();
    (form, lines)
}

/// A fresh order after healing (invariant 9): placed, then followed until it completes.
pub async fn fresh_order(client: &Client, bound: Duration) -> Result<String, String> {
    let until = Instant::now() + bound;
    let form = json!({
        "customer": "chaos-after-heal",
        "lines": [{ "sku": "SKU-MUG", "quantity": 1 }],
        "card_number": CARD,
        "shipping_address": ADDRESS,
    });
    let key = format!("chaos-fresh-{}", uuid::Uuid::now_v7().simple());
    let (answer, _) = client.place(&form, &key, until).await;
    let id = match answer {
        Some((200 | 201, body)) => body["order_id"].as_str().unwrap_or_default().to_string(),
        Some((status, body)) => return Err(format!("POST /orders answered {status}: {body}")),
        None => return Err("POST /orders got no answer".into()),
    };
    let mut last = None;
    while Instant::now() < until {
        last = client.status(&id).await;
        if last.as_deref() == Some("COMPLETED") {
            return Ok(id);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!(
        "{id} is {} after {} s",
        last.unwrap_or_else(|| "not in the read model".into()),
        bound.as_secs()
    ))
}
