//! Simulated external systems, over loopback HTTP so that calls to them are real network calls:
//! the payment gateway and the carrier. Each keeps a ledger keyed by idempotency key and takes
//! faults at run time (`PUT /v1/faults {"latency_ms":…, "error_rate":…, "outage":…}`).

pub mod carrier;
pub mod faults;
pub mod payment_gateway;

use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};

use serde::{Deserialize, Serialize};

use self::carrier::{Carrier, Pace};
use self::payment_gateway::PaymentGateway;
use crate::gateway::{cannot_listen, spawn_server};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorSettings {
    /// Where the payment gateway simulator listens (port 0: any free port).
    pub payment_gateway_addr: String,
    /// Where the carrier simulator listens (port 0: any free port).
    pub carrier_addr: String,
    /// A booked parcel is picked up after this long (unless its address holds it).
    pub carrier_pickup_ms: u64,
    /// A picked-up parcel is delivered after this long.
    pub carrier_delivery_ms: u64,
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        SimulatorSettings {
            payment_gateway_addr: "127.0.0.1:7701".into(),
            carrier_addr: "127.0.0.1:7702".into(),
            carrier_pickup_ms: 3_000,
            carrier_delivery_ms: 5_000,
        }
    }
}

/// Both simulators, running.
pub struct Simulators {
    pub payment_gateway_url: String,
    pub carrier_url: String,
    servers: Vec<ServerHandle>,
    ticker: actix_rt::task::JoinHandle<()>,
}

impl Simulators {
    /// Start both on the current actix system.
    pub async fn start(settings: &SimulatorSettings) -> std::io::Result<Simulators> {
        let gateway = PaymentGateway::default();
        let (payment_gateway_url, gateway_server) = serve(
            &settings.payment_gateway_addr,
            web::Data::new(gateway.clone()),
            web::Data::new(gateway.faults.clone()),
            PaymentGateway::routes,
        )?;
        let carrier = Carrier::new(Pace {
            pickup_after: Duration::from_millis(settings.carrier_pickup_ms),
            deliver_after: Duration::from_millis(settings.carrier_delivery_ms),
        });
        let (carrier_url, carrier_server) = serve(
            &settings.carrier_addr,
            web::Data::new(carrier.clone()),
            web::Data::new(carrier.faults.clone()),
            Carrier::routes,
        )?;
        let ticker = actix_rt::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(50));
            loop {
                every.tick().await;
                carrier.advance();
            }
        });
        Ok(Simulators {
            payment_gateway_url,
            carrier_url,
            servers: vec![gateway_server, carrier_server],
            ticker,
        })
    }

    pub async fn stop(self) {
        self.ticker.abort();
        for server in self.servers {
            server.stop(true).await;
        }
    }
}

/// A simulator's books. A panicked handler cannot leave them half-written (every change is one
/// push or insert), so a poisoned lock is used as is rather than failing every later call.
fn lock<T>(books: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    books
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn serve<T: Send + Sync + 'static>(
    addr: &str,
    data: web::Data<T>,
    faults: web::Data<faults::FaultState>,
    routes: fn(&mut web::ServiceConfig),
) -> std::io::Result<(String, ServerHandle)> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(faults.clone())
            .app_data(web::JsonConfig::default().limit(64 * 1024))
            .configure(routes)
            .configure(faults::routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)
    .map_err(cannot_listen(addr))?;
    let addrs = server.addrs();
    let (bound, handle) = spawn_server(server.run(), &addrs, addr)?;
    Ok((format!("http://{bound}"), handle))
}
