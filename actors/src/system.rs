//! Starting the system: everything in one process (`commerce up`), or one component per process
//! (`commerce run <component>`). Either way each service is its own actor group on its own
//! Arbiter with its own database, and everything talks through NATS.

use std::net::SocketAddr;

use actix_web::dev::ServerHandle;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use bus::Login;

use crate::access::BusUser;
use crate::engine::host::{self, RunningComponent};
use crate::engine::EngineError;
use crate::gateway::auth::ApiAuth;
use crate::inventory::InventoryService;
use crate::order::OrderService;
use crate::payment::PaymentService;
use crate::recommendation::RecommendationService;
use crate::rpc::Component;
use crate::shipment::ShipmentService;
use crate::simulators::{Simulators, StandIn};
use crate::store::StoreService;
use crate::{gateway, Runtime, Settings};

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Auth(#[from] crate::gateway::auth::AuthError),
    /// Only the services and the projection run on an Arbiter of their own.
    #[error("{0} does not run on an Arbiter of its own")]
    NotOnArbiter(Component),
}

/// Where a running system can be reached (printed by `up`, saved as `endpoints.json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Endpoints {
    pub nats: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
}

/// How `domain`'s owner places what concerns one order: in the order's own aggregate, or in one
/// for everything (the chaos harness checks event versions per aggregate).
pub fn placement(domain: bus::Domain) -> crate::engine::Placement {
    use crate::engine::Service;
    use bus::Domain;
    match domain {
        Domain::Orders => OrderService::PLACEMENT,
        Domain::Payments => PaymentService::PLACEMENT,
        Domain::Inventory => InventoryService::PLACEMENT,
        Domain::Stores => StoreService::PLACEMENT,
        Domain::Shipments => ShipmentService::PLACEMENT,
        Domain::Recommendations => RecommendationService::PLACEMENT,
    }
}

/// Start service `service` on its own Arbiter.
async fn spawn_service(
    service: Component,
    settings: Settings,
    login: Login,
    shutdown: CancellationToken,
) -> Result<RunningComponent, SystemError> {
    let (s, u, t) = (settings, login, shutdown);
    Ok(match service {
        Component::Order => host::spawn::<OrderService>(s, u, t).await?,
        Component::Payment => host::spawn::<PaymentService>(s, u, t).await?,
        Component::Inventory => host::spawn::<InventoryService>(s, u, t).await?,
        Component::Store => host::spawn::<StoreService>(s, u, t).await?,
        Component::Shipment => host::spawn::<ShipmentService>(s, u, t).await?,
        Component::Recommendation => host::spawn::<RecommendationService>(s, u, t).await?,
        Component::Projection => crate::projection::spawn(s, u, t).await?,
        Component::Gateway | Component::Simulators => {
            return Err(SystemError::NotOnArbiter(service))
        }
    })
}

/// How often streams are checked (and provisioned again if the broker lost them).
const KEEP_STREAMS_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// The outside systems' addresses.
#[derive(Debug, Clone, Default)]
struct Outside {
    payment_gateway: Option<String>,
    carrier: Option<String>,
}

/// A running system (or part of one).
pub struct System {
    pub runtime: Runtime,
    pub simulators: Option<Simulators>,
    /// Where the outside systems are: as configured, or the simulators started here.
    outside: Outside,
    pub components: Vec<RunningComponent>,
    pub http: Option<(SocketAddr, ServerHandle)>,
    /// The admin listener: `/metrics` (and the dashboard, beside the gateway).
    pub admin: Option<(SocketAddr, ServerHandle)>,
    shutdown: CancellationToken,
}

impl System {
    /// Everything: broker (embedded unless a URL is set), simulators (unless both outside
    /// systems' URLs are set), all six services, gateway.
    pub async fn up(settings: Settings) -> Result<System, SystemError> {
        System::up_with(settings, true).await
    }

    /// [`System::up`], with the six services in this process or (`services: false`) not: they
    /// run elsewhere, as instances (`commerce up --instances`).
    pub async fn up_with(settings: Settings, services: bool) -> Result<System, SystemError> {
        let mut system = System::new(Runtime::start(settings.clone()).await?);
        system.keep_streams();
        // One process: every component records into the recorder the admin side serves.
        crate::telemetry::metrics::install().map_err(std::io::Error::other)?;
        match system.start_all(settings, services).await {
            Ok(()) => Ok(system),
            Err(e) => {
                // A failed start stops what was started: no orphaned broker or threads.
                system.shutdown().await;
                Err(e)
            }
        }
    }

    /// One component, on a broker that someone else runs (`settings.nats_url`).
    pub async fn run(component: Component, settings: Settings) -> Result<System, SystemError> {
        let mut system = System::new(Runtime::join(settings, component).await?);
        // As the running system has it (its streams' partitions).
        let settings = system.runtime.settings.clone();
        system.keep_streams();
        if component == Component::Gateway || settings.metrics_addr.is_some() {
            crate::telemetry::metrics::install().map_err(std::io::Error::other)?;
        }
        let started = match system.start(component, &settings).await {
            Ok(()) => system.serve_metrics(&settings),
            Err(e) => Err(e),
        };
        match started {
            Ok(()) => Ok(system),
            Err(e) => {
                system.shutdown().await;
                Err(e)
            }
        }
    }

    /// Where this process provisions the streams, it keeps them provisioned.
    fn keep_streams(&self) {
        if let Some(operator) = &self.runtime.operator {
            actix_rt::spawn(bus::streams::keep_provisioned(
                async_nats::jetstream::new(operator.clone()),
                self.runtime.settings.streams.clone(),
                KEEP_STREAMS_EVERY,
                self.shutdown.clone(),
            ));
        }
    }

    fn new(runtime: Runtime) -> System {
        System {
            runtime,
            simulators: None,
            outside: Outside::default(),
            components: Vec::new(),
            http: None,
            admin: None,
            shutdown: CancellationToken::new(),
        }
    }

    async fn start_all(
        &mut self,
        mut settings: Settings,
        services: bool,
    ) -> Result<(), SystemError> {
        // The simulators stand in for the outside systems no URL is set for, and only those.
        let stand_in = StandIn {
            payment_gateway: settings.payment_gateway_url.is_none(),
            carrier: settings.carrier_url.is_none(),
        };
        if stand_in.any() {
            self.start_simulators(&settings, stand_in).await?;
        }
        if let Some(simulators) = &self.simulators {
            settings.payment_gateway_url = settings
                .payment_gateway_url
                .or(simulators.payment_gateway_url.clone());
            settings.carrier_url = settings.carrier_url.or(simulators.carrier_url.clone());
        }
        self.outside = Outside {
            payment_gateway: settings.payment_gateway_url.clone(),
            carrier: settings.carrier_url.clone(),
        };
        if services {
            for component in Component::SERVICES {
                self.start(component, &settings).await?;
            }
        }
        self.start(Component::Projection, &settings).await?;
        self.start(Component::Gateway, &settings).await
    }

    async fn start(
        &mut self,
        component: Component,
        settings: &Settings,
    ) -> Result<(), SystemError> {
        match component {
            Component::Gateway => {
                let client = self
                    .runtime
                    .login(BusUser::Component(component))
                    .connect()
                    .await?;
                let (ops, transitions) = crate::resilience::Ops::new(settings.resilience.clone());
                actix_rt::spawn(crate::resilience::publish_transitions(
                    async_nats::jetstream::new(client.clone()),
                    transitions,
                ));
                // The gateway's admin side: this process's metrics, and the dashboard where this
                // process holds the operator's connection (it reads DLQ and every stream, which
                // the internet-facing gateway's identity may not).
                crate::telemetry::metrics::install().map_err(std::io::Error::other)?;
                self.admin = Some(crate::admin::start(
                    &settings.admin_addr,
                    self.runtime.operator.clone(),
                )?);
                self.http = Some(gateway::start(
                    &settings.http_addr,
                    client,
                    &settings.payment_gateway_url(),
                    &ops,
                    ApiAuth::from_settings(settings)?,
                    settings.routes(),
                )?);
            }
            Component::Simulators => self.start_simulators(settings, StandIn::BOTH).await?,
            component => {
                let login = self.runtime.login(BusUser::Component(component));
                let running =
                    spawn_service(component, settings.clone(), login, self.shutdown.clone())
                        .await?;
                self.components.push(running);
            }
        }
        Ok(())
    }

    async fn start_simulators(
        &mut self,
        settings: &Settings,
        stand_in: StandIn,
    ) -> Result<(), SystemError> {
        let simulators = Simulators::start(&settings.simulators, stand_in).await?;
        self.outside = Outside {
            payment_gateway: simulators.payment_gateway_url.clone(),
            carrier: simulators.carrier_url.clone(),
        };
        self.simulators = Some(simulators);
        Ok(())
    }

    /// A component in its own process serves its own `/metrics` where the settings say.
    fn serve_metrics(&mut self, settings: &Settings) -> Result<(), SystemError> {
        if let (None, Some(addr)) = (&self.admin, &settings.metrics_addr) {
            crate::telemetry::metrics::install().map_err(std::io::Error::other)?;
            self.admin = Some(crate::admin::start(addr, None)?);
        }
        Ok(())
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            nats: self.runtime.broker.url(),
            http: self.http.as_ref().map(|(addr, _)| format!("http://{addr}")),
            admin: self
                .admin
                .as_ref()
                .map(|(addr, _)| format!("http://{addr}")),
            payment_gateway: self.outside.payment_gateway.clone(),
            carrier: self.outside.carrier.clone(),
        }
    }

    /// Cancelled when shutdown begins, also when a component asks for it (a lost lease).
    pub fn stopping(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stop in reverse: gateway, services (each finishes its batch and flushes), simulators, broker.
    pub async fn shutdown(self) {
        if let Some((_, http)) = self.http {
            http.stop(true).await;
        }
        if let Some((_, admin)) = self.admin {
            admin.stop(true).await;
        }
        self.shutdown.cancel();
        for running in self.components {
            let component = running.component;
            if let Err(e) = running.join().await {
                tracing::warn!(%component, error = %e, "stopped with an error");
            }
        }
        if let Some(simulators) = self.simulators {
            simulators.stop().await;
        }
        self.runtime.shutdown().await;
    }
}
