//! Bringing the system up and down: the broker, who may connect to it, and the streams.

use bus::server::{port_is_free, NatsCluster, NatsServer, ServerConfig};
use bus::streams::Provisioned;
use bus::{BusError, Login};

use crate::access::{BusUser, Keyring};
use crate::rpc::Routes;
use crate::{Component, Settings};

/// Where the broker comes from.
#[allow(clippy::large_enum_variant)] // one per process
pub enum Broker {
    /// A nats-server child process of ours, storing under `<data-dir>/nats`.
    Embedded(NatsServer),
    /// nats-server child processes of ours in a cluster, storing under `<data-dir>/nats/node-<i>`.
    Cluster(NatsCluster),
    /// A server someone else runs.
    External(String),
}

impl Broker {
    pub fn url(&self) -> String {
        match self {
            Broker::Embedded(server) => server.url(),
            Broker::Cluster(cluster) => cluster.url(),
            Broker::External(url) => url.clone(),
        }
    }
}

/// The running system's broker side.
pub struct Runtime {
    pub settings: Settings,
    pub broker: Broker,
    /// The credentials of every identity this process connects as.
    pub keyring: Keyring,
    /// The operator's connection, where this process is the operator (`commerce up`, or `run`
    /// on a broker that lets anyone in): it provisions the streams.
    pub operator: Option<async_nats::Client>,
    /// What provisioning did to each stream at start.
    pub streams: Vec<(&'static str, Provisioned)>,
}

impl Runtime {
    /// `commerce up`: start (or reach) the broker, as the operator, and provision every stream.
    /// The embedded broker (with `auth` on) admits only the identities of
    /// [`Keyring::prepare`].
    pub async fn start(mut settings: Settings) -> Result<Runtime, BusError> {
        if settings.nats_url.is_none() && settings.nats_cluster > 1 {
            // A cluster's streams are replicated; three copies survive the loss of any one.
            let replicas = settings.nats_cluster.min(3);
            settings.streams.replicas = settings.streams.replicas.max(replicas);
        }
        let (broker, keyring) = match &settings.nats_url {
            Some(url) => {
                let users: Vec<BusUser> = BusUser::all().collect();
                let keyring = Keyring::load(&settings, &users)?;
                (Broker::External(url.clone()), keyring)
            }
            None if settings.auth => {
                let (keyring, access) =
                    Keyring::prepare_broker(&settings.data_dir, settings.routes())?;
                (embedded(&settings, access).await?, keyring)
            }
            None => (embedded(&settings, None).await?, Keyring::default()),
        };
        let mut runtime = Runtime {
            settings,
            broker,
            keyring,
            operator: None,
            streams: Vec::new(),
        };
        runtime.provision(BusUser::Operator).await?;
        Ok(runtime)
    }

    /// `commerce run <component>`: reach the broker at `settings.nats_url` as `component`.
    /// Streams are the operator's to provision; on a broker that lets anyone in (no
    /// credentials), this process provisions them as before.
    pub async fn join(settings: Settings, component: Component) -> Result<Runtime, BusError> {
        let url = settings.nats_url.clone().unwrap_or_default();
        let keyring = match component {
            // The simulators stand for outside systems: they do not use the bus.
            Component::Simulators => Keyring::default(),
            c => Keyring::load(&settings, &[BusUser::Component(c), BusUser::Replayer(c)])?,
        };
        let open = keyring.get(BusUser::Component(component)).is_none();
        let mut runtime = Runtime {
            settings,
            broker: Broker::External(url),
            keyring,
            operator: None,
            streams: Vec::new(),
        };
        // The streams' count first: provisioning with its own would repartition streams that
        // hold no event yet under the process that made them.
        if component != Component::Simulators {
            runtime.adopt_partitions(component).await?;
        }
        if open && component != Component::Simulators {
            runtime.provision(BusUser::Component(component)).await?;
        }
        Ok(runtime)
    }

    /// A process joining a running system splits its services as the streams are partitioned,
    /// whatever its own settings say: every process must agree, and the streams' count cannot
    /// change under stored events. Streams not provisioned yet: as its settings say.
    async fn adopt_partitions(&mut self, component: Component) -> Result<(), BusError> {
        let client = self.login(BusUser::Component(component)).connect().await?;
        let js = async_nats::jetstream::new(client.clone());
        match Routes::of_broker(&js).await {
            Ok(routes) => {
                let count = routes.partitions().count();
                if count != self.settings.streams.partitions {
                    tracing::warn!(streams = count, settings = self.settings.streams.partitions,
                        "the streams' partition count differs from the settings'; using the streams'");
                    self.settings.streams.partitions = count;
                }
            }
            Err(e) => tracing::debug!(error = %e, "partitions as the settings say"),
        }
        let _ = client.drain().await;
        let count = self.settings.streams.partitions;
        match self.settings.home.iter().flatten().find(|k| **k >= count) {
            Some(k) => Err(BusError::Invalid(format!(
                "--home names partition {k}, but the streams have {count} (0..{count})"
            ))),
            None => Ok(()),
        }
    }

    /// How `user` reaches the broker.
    pub fn login(&self, user: BusUser) -> Login {
        self.keyring.login(&self.broker.url(), user)
    }

    async fn provision(&mut self, user: BusUser) -> Result<(), BusError> {
        let client = self.login(user).connect().await?;
        let js = async_nats::jetstream::new(client.clone());
        self.streams = bus::provision(&js, &self.settings.streams).await?;
        self.operator = Some(client);
        Ok(())
    }

    /// Drain the connection, then stop the embedded broker cleanly (SIGTERM, wait).
    pub async fn shutdown(self) {
        if let Some(client) = self.operator {
            if let Err(e) = client.drain().await {
                tracing::warn!(error = %e, "draining the NATS connection failed");
            }
        }
        match self.broker {
            Broker::Embedded(mut server) => server.stop().await,
            Broker::Cluster(mut cluster) => cluster.stop().await,
            Broker::External(_) => {}
        }
    }
}

/// Our own nats-server under `<data-dir>/nats`, on the preferred port if it is free.
async fn embedded(
    settings: &Settings,
    authorization: Option<(String, bus::Credentials)>,
) -> Result<Broker, BusError> {
    let dir = settings.data_dir.join("nats");
    let mut config = ServerConfig::new(&dir);
    config.sync_always = settings.nats_sync_always;
    config.max_procs = Some(settings.nats_cores());
    config.authorization = authorization;
    let clustered = settings.nats_cluster > 1;
    // A store holds one kind of broker: the events and their sequences the services' databases
    // point at are in it, so changing kind would start from an empty broker.
    let (other_store, other_kind) = if clustered {
        (dir.join("jetstream"), "a single nats-server")
    } else {
        (dir.join("node-1"), "a cluster (--cluster N)")
    };
    if other_store.exists() {
        return Err(BusError::Server(format!(
            "{} holds the store of {other_kind}: start it that way, or use another --data-dir",
            dir.display()
        )));
    }
    let preferred = settings.nats_port;
    if clustered {
        config.port = Some(preferred).filter(|p| *p != 0 && port_is_free(*p));
        return Ok(Broker::Cluster(
            NatsCluster::start(settings.nats_cluster, config).await?,
        ));
    }
    if preferred != 0 && port_is_free(preferred) {
        config.port = Some(preferred);
        match NatsServer::start(config.clone()).await {
            Ok(server) => return Ok(Broker::Embedded(server)),
            // Taken between the check and the bind (another `up` starting).
            Err(e) => {
                tracing::info!(port = preferred, error = %e,
                    "port lost; the embedded nats-server picks a free one");
                config.port = None;
            }
        }
    } else if preferred != 0 {
        tracing::info!(
            port = preferred,
            "port taken; the embedded nats-server picks a free one"
        );
    }
    Ok(Broker::Embedded(NatsServer::start(config).await?))
}
