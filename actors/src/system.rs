//! Starting the system: everything in one process (`commerce up`), or one component per process
//! (`commerce run <component>`). Either way each service is its own actor group on its own
//! Arbiter with its own database, and everything talks through NATS.

use std::net::SocketAddr;

use actix_web::dev::ServerHandle;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::engine::host::{self, RunningService};
use crate::engine::EngineError;
use crate::inventory::InventoryService;
use crate::order::OrderService;
use crate::payment::PaymentService;
use crate::recommendation::RecommendationService;
use crate::shipment::ShipmentService;
use crate::simulators::Simulators;
use crate::store::StoreService;
use crate::{gateway, Runtime, Settings};

/// Every service, in saga order.
pub const SERVICES: [&str; 6] = [
    "order",
    "payment",
    "inventory",
    "store",
    "shipment",
    "recommendation",
];

/// What `commerce run` can start besides the services.
pub const OTHER_COMPONENTS: [&str; 3] = ["projection", "gateway", "simulators"];

/// Everything that answers on `commerce.<name>.status`: the services and the projection.
pub fn status_components() -> impl Iterator<Item = &'static str> {
    SERVICES.into_iter().chain([crate::projection::NAME])
}

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(
        "unknown component {name:?}; one of: {services}, {others}",
        name = .0,
        services = SERVICES.join(", "),
        others = OTHER_COMPONENTS.join(", ")
    )]
    UnknownComponent(String),
}

/// Where a running system can be reached (printed by `up`, saved as `endpoints.json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Endpoints {
    pub nats: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
}

/// Start service `name` on its own Arbiter.
pub async fn spawn_service(
    name: &str,
    settings: Settings,
    nats_url: String,
    shutdown: CancellationToken,
) -> Result<RunningService, SystemError> {
    let s = settings;
    let u = nats_url;
    let t = shutdown;
    Ok(match name {
        "order" => host::spawn::<OrderService>(s, u, t).await?,
        "payment" => host::spawn::<PaymentService>(s, u, t).await?,
        "inventory" => host::spawn::<InventoryService>(s, u, t).await?,
        "store" => host::spawn::<StoreService>(s, u, t).await?,
        "shipment" => host::spawn::<ShipmentService>(s, u, t).await?,
        "recommendation" => host::spawn::<RecommendationService>(s, u, t).await?,
        other => return Err(SystemError::UnknownComponent(other.to_string())),
    })
}

/// A running system (or part of one).
pub struct System {
    pub runtime: Runtime,
    pub simulators: Option<Simulators>,
    pub services: Vec<RunningService>,
    pub http: Option<(SocketAddr, ServerHandle)>,
    shutdown: CancellationToken,
}

impl System {
    /// Everything: broker (embedded unless a URL is set), simulators, all six services, gateway.
    pub async fn up(settings: Settings) -> Result<System, SystemError> {
        let mut system = System::new(Runtime::start(settings.clone()).await?);
        match system.start_all(settings).await {
            Ok(()) => Ok(system),
            Err(e) => {
                // A failed start stops what was started: no orphaned broker or threads.
                system.shutdown().await;
                Err(e)
            }
        }
    }

    /// One component, on a broker that someone else runs (`settings.nats_url`).
    pub async fn run(component: &str, settings: Settings) -> Result<System, SystemError> {
        if !SERVICES.contains(&component) && !OTHER_COMPONENTS.contains(&component) {
            return Err(SystemError::UnknownComponent(component.to_string()));
        }
        let mut system = System::new(Runtime::start(settings.clone()).await?);
        match system.start(component, &settings).await {
            Ok(()) => Ok(system),
            Err(e) => {
                system.shutdown().await;
                Err(e)
            }
        }
    }

    fn new(runtime: Runtime) -> System {
        System {
            runtime,
            simulators: None,
            services: Vec::new(),
            http: None,
            shutdown: CancellationToken::new(),
        }
    }

    async fn start_all(&mut self, mut settings: Settings) -> Result<(), SystemError> {
        self.start("simulators", &settings).await?;
        if let Some(simulators) = &self.simulators {
            settings
                .payment_gateway_url
                .get_or_insert(simulators.payment_gateway_url.clone());
            settings
                .carrier_url
                .get_or_insert(simulators.carrier_url.clone());
        }
        for name in SERVICES {
            self.start(name, &settings).await?;
        }
        self.start(crate::projection::NAME, &settings).await?;
        self.start("gateway", &settings).await
    }

    async fn start(&mut self, component: &str, settings: &Settings) -> Result<(), SystemError> {
        match component {
            "gateway" => {
                let (ops, transitions) = crate::resilience::Ops::new(settings.resilience.clone());
                actix_rt::spawn(crate::resilience::publish_transitions(
                    self.runtime.js.clone(),
                    transitions,
                ));
                self.http = Some(gateway::start(
                    &settings.http_addr,
                    self.runtime.client.clone(),
                    &ops,
                )?);
            }
            "simulators" => {
                self.simulators = Some(Simulators::start(&settings.simulators).await?);
            }
            crate::projection::NAME => {
                let url = self.runtime.broker.url();
                let running =
                    crate::projection::spawn(settings.clone(), url, self.shutdown.clone()).await?;
                self.services.push(running);
            }
            service => {
                let url = self.runtime.broker.url();
                let running =
                    spawn_service(service, settings.clone(), url, self.shutdown.clone()).await?;
                self.services.push(running);
            }
        }
        Ok(())
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            nats: self.runtime.broker.url(),
            http: self.http.as_ref().map(|(addr, _)| format!("http://{addr}")),
            payment_gateway: self
                .simulators
                .as_ref()
                .map(|s| s.payment_gateway_url.clone()),
            carrier: self.simulators.as_ref().map(|s| s.carrier_url.clone()),
        }
    }

    /// Stop in reverse: gateway, services (each finishes its batch and flushes), simulators, broker.
    pub async fn shutdown(self) {
        if let Some((_, http)) = self.http {
            http.stop(true).await;
        }
        self.shutdown.cancel();
        for service in self.services {
            let name = service.name;
            if let Err(e) = service.join().await {
                tracing::warn!(service = name, error = %e, "service stopped with an error");
            }
        }
        if let Some(simulators) = self.simulators {
            simulators.stop().await;
        }
        self.runtime.shutdown().await;
    }
}
