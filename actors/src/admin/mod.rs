//! The admin listener: what operators read, apart from the public API. Unauthenticated, so it
//! listens on a private interface (loopback by default).
//!
//! - `GET /metrics`: this process's metrics, Prometheus text format ([`crate::telemetry`]).
//! - `GET /dashboard`: a live page (plain HTML and JS, [`dashboard.html`]) fed by
//!   `GET /dashboard/events` (Server-Sent Events: the current [`Snapshot`] at once, then one per
//!   second) and `GET /dashboard/orders/{id}` (one order's [`OrderHistory`]). Only where an
//!   observer is given: the operator's connection (`commerce up`), which may read every stream.
//!
//! One gatherer per listener reads the system every second, whatever the number of pages open.

pub mod history;
pub mod snapshot;

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::watch;

pub use self::history::OrderHistory;
pub use self::snapshot::Snapshot;
use crate::http::{cannot_listen, spawn_server};
use crate::telemetry::metrics;

const DASHBOARD: &str = include_str!("dashboard.html");
/// How often the dashboard's numbers are gathered.
const GATHER_EVERY: Duration = Duration::from_secs(1);

/// What the dashboard reads the system with: the operator's connection (stream and consumer
/// info, dead letters, the components' status).
#[derive(Clone)]
struct Observer {
    js: async_nats::jetstream::Context,
    snapshots: watch::Receiver<Snapshot>,
}

/// Serve `/metrics` (and, given `observer`, the dashboard) on `addr`; returns where it listens.
pub fn start(
    addr: &str,
    observer: Option<async_nats::Client>,
) -> std::io::Result<(SocketAddr, ServerHandle)> {
    let observer = observer.map(|client| {
        let js = async_nats::jetstream::new(client.clone());
        let (tx, snapshots) = watch::channel(Snapshot::default());
        actix_rt::spawn(gather(client, js.clone(), tx));
        web::Data::new(Observer { js, snapshots })
    });
    let server = HttpServer::new(move || {
        let app = App::new().route("/metrics", web::get().to(prometheus));
        let app = match &observer {
            Some(observer) => app
                .app_data(observer.clone())
                .route("/dashboard", web::get().to(dashboard))
                .route("/dashboard/events", web::get().to(events))
                .route("/dashboard/orders/{id}", web::get().to(order)),
            None => app,
        };
        app.default_service(web::to(|| async {
            error(StatusCode::NOT_FOUND, "no such endpoint")
        }))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)
    .map_err(cannot_listen(addr))?;
    let addrs = server.addrs();
    spawn_server(server.run(), &addrs, addr)
}

/// Gather a snapshot every second while anyone may read it (the listener is up).
async fn gather(
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    tx: watch::Sender<Snapshot>,
) {
    let mut tick = tokio::time::interval(GATHER_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tick.tick() => {}
        }
        let before = tx.borrow().clone();
        let now = snapshot::gather(&client, &js, &before).await;
        tx.send_replace(now);
    }
}

fn error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

async fn prometheus() -> HttpResponse {
    match metrics::render() {
        Some(text) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text),
        None => error(StatusCode::NOT_FOUND, "metrics are off in this process"),
    }
}

async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(DASHBOARD)
}

/// The snapshots as Server-Sent Events: the current one first (a page opened late misses
/// nothing), then each new one.
async fn events(observer: web::Data<Observer>) -> HttpResponse {
    let mut snapshots = observer.snapshots.clone();
    snapshots.mark_changed();
    let stream = futures::stream::unfold(snapshots, |mut snapshots| async move {
        snapshots.changed().await.ok()?;
        let json = serde_json::to_string(&*snapshots.borrow_and_update()).ok()?;
        let frame = Bytes::from(format!("event: snapshot\ndata: {json}\n\n"));
        Some((Ok::<_, actix_web::Error>(frame), snapshots))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(stream)
}

async fn order(observer: web::Data<Observer>, id: web::Path<String>) -> HttpResponse {
    match history::read(&observer.js, &id).await {
        Ok(Some(history)) => HttpResponse::Ok().json(history),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            &format!("no events about order {id}"),
        ),
        Err(e @ history::HistoryError::NotAnOrder(_)) => {
            error(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
