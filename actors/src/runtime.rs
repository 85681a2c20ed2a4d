//! Bringing the system up and down: the broker, the streams, and (as they land) the services.

use bus::server::{port_is_free, NatsServer, ServerConfig};
use bus::streams::Provisioned;
use bus::BusError;

use crate::Settings;

/// Where the broker comes from.
pub enum Broker {
    /// A nats-server child process of ours, storing under `<data-dir>/nats`.
    Embedded(NatsServer),
    /// A server someone else runs.
    External(String),
}

impl Broker {
    pub fn url(&self) -> String {
        match self {
            Broker::Embedded(server) => server.url(),
            Broker::External(url) => url.clone(),
        }
    }
}

/// The running system.
pub struct Runtime {
    pub settings: Settings,
    pub broker: Broker,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    /// What provisioning did to each stream at start.
    pub streams: Vec<(&'static str, Provisioned)>,
}

impl Runtime {
    /// Start (or reach) the broker and provision every stream.
    pub async fn start(settings: Settings) -> Result<Runtime, BusError> {
        let broker = match &settings.nats_url {
            Some(url) => Broker::External(url.clone()),
            None => {
                let dir = settings.data_dir.join("nats");
                let mut config = ServerConfig::new(&dir);
                config.sync_always = settings.nats_sync_always;
                let preferred = settings.nats_port;
                if preferred != 0 && port_is_free(preferred) {
                    config.port = Some(preferred);
                    match NatsServer::start(config.clone()).await {
                        Ok(server) => Broker::Embedded(server),
                        // Taken between the check and the bind (another `up` starting).
                        Err(e) => {
                            tracing::info!(port = preferred, error = %e,
                                "port lost; the embedded nats-server picks a free one");
                            config.port = None;
                            Broker::Embedded(NatsServer::start(config).await?)
                        }
                    }
                } else {
                    if preferred != 0 {
                        tracing::info!(
                            port = preferred,
                            "port taken; the embedded nats-server picks a free one"
                        );
                    }
                    Broker::Embedded(NatsServer::start(config).await?)
                }
            }
        };
        let client = bus::connect(&broker.url()).await?;
        let js = async_nats::jetstream::new(client.clone());
        let streams = bus::provision(&js, &settings.streams).await?;
        Ok(Runtime {
            settings,
            broker,
            client,
            js,
            streams,
        })
    }

    /// Drain the connection, then stop the embedded broker cleanly (SIGTERM, wait).
    pub async fn shutdown(self) {
        if let Err(e) = self.client.drain().await {
            tracing::warn!(error = %e, "draining the NATS connection failed");
        }
        if let Broker::Embedded(mut server) = self.broker {
            server.stop().await;
        }
    }
}
