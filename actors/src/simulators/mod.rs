//! Simulated external systems, over loopback HTTP so that calls to them are real network calls:
//! the payment gateway and the carrier. Each keeps a ledger keyed by idempotency key and takes
//! faults at run time (`PUT /v1/faults {"latency_ms":…, "error_rate":…, "outage":…}`).
//! They speak the wire types of [`crate::external`], the same the services' clients use.

pub mod carrier;
pub mod faults;
pub mod payment_gateway;

use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};

use self::carrier::{Carrier, Pace};
use self::payment_gateway::PaymentGateway;
use crate::http::{cannot_listen, spawn_server};
use crate::settings::SimulatorSettings;

/// Which outside systems to stand in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandIn {
    pub payment_gateway: bool,
    pub carrier: bool,
}

impl StandIn {
    pub const BOTH: StandIn = StandIn {
        payment_gateway: true,
        carrier: true,
    };

    pub fn any(self) -> bool {
        self.payment_gateway || self.carrier
    }
}

/// The simulators asked for, running: each URL is set where that simulator runs.
pub struct Simulators {
    pub payment_gateway_url: Option<String>,
    pub carrier_url: Option<String>,
    servers: Vec<ServerHandle>,
    ticker: Option<actix_rt::task::JoinHandle<()>>,
}

impl Simulators {
    /// Start the ones `stand_in` asks for on the current actix system.
    pub async fn start(
        settings: &SimulatorSettings,
        stand_in: StandIn,
    ) -> std::io::Result<Simulators> {
        let mut simulators = Simulators {
            payment_gateway_url: None,
            carrier_url: None,
            servers: Vec::new(),
            ticker: None,
        };
        if stand_in.payment_gateway {
            let gateway = PaymentGateway::default();
            let (url, server) = serve(
                &settings.payment_gateway_addr,
                web::Data::new(gateway.clone()),
                web::Data::new(gateway.faults.clone()),
                PaymentGateway::routes,
            )?;
            simulators.payment_gateway_url = Some(url);
            simulators.servers.push(server);
        }
        if stand_in.carrier {
            let carrier = Carrier::new(Pace {
                pickup_after: settings.carrier_pickup(),
                deliver_after: settings.carrier_delivery(),
            });
            let (url, server) = serve(
                &settings.carrier_addr,
                web::Data::new(carrier.clone()),
                web::Data::new(carrier.faults.clone()),
                Carrier::routes,
            )?;
            simulators.carrier_url = Some(url);
            simulators.servers.push(server);
            simulators.ticker = Some(actix_rt::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(50));
                loop {
                    every.tick().await;
                    carrier.advance();
                }
            }));
        }
        Ok(simulators)
    }

    pub async fn stop(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
        }
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
