//! How client commands (`status`, `order`, `projection`, `faults`, `bench`) reach the broker.

use std::time::Duration;

use actors::access::{BusUser, Keyring};
use actors::Settings;
use anyhow::Context;

use crate::launch::url_file;

/// The broker a client command talks to: --nats / NATS_URL, else the one `up` wrote down.
pub fn client_url(settings: &Settings) -> String {
    match &settings.nats_url {
        Some(url) => url.clone(),
        None => std::fs::read_to_string(url_file(&settings.data_dir))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
    }
}

/// How long each server has to answer a new connection before the next one is tried: a frozen
/// node of a cluster (its socket open, nothing answering) costs this much, not the command.
const CONNECT_EACH: Duration = Duration::from_secs(5);

/// Connect as the operator: with `--nats-creds` (or `NATS_CREDS`), else the operator's
/// credentials that `commerce up` keeps under the data dir.
pub(crate) async fn connect(settings: &Settings) -> anyhow::Result<async_nats::Client> {
    let url = client_url(settings);
    let keyring = Keyring::load(settings, &[BusUser::Operator])?;
    let mut options = async_nats::ConnectOptions::new()
        .name("commerce-cli")
        .connection_timeout(CONNECT_EACH)
        .ping_interval(bus::PING_INTERVAL)
        .custom_inbox_prefix(bus::inbox_prefix(&BusUser::Operator.name()));
    if let Some(credentials) = keyring.get(BusUser::Operator) {
        options = credentials.apply(options).await?;
    }
    let servers = bus::server_urls(&url);
    // Every server in turn, each once; a little more for the client's pauses between them.
    let all = CONNECT_EACH * servers.len().max(1) as u32 + Duration::from_secs(1);
    tokio::time::timeout(all, options.connect(servers.as_slice()))
        .await
        .map_err(|_| anyhow::anyhow!("no NATS server answers at {url}; is `commerce up` running?"))?
        .with_context(|| {
            format!(
                "cannot connect to {url} (is `commerce up` running? with another --data-dir, \
                 give the operator's credentials: --nats-creds FILE or NATS_CREDS)"
            )
        })
}

/// A simulator's address: from the running `commerce up` (`endpoints.json`), else settings.
pub fn simulator_url(simulator: &str, settings: &Settings) -> anyhow::Result<String> {
    let file = settings.data_dir.join("endpoints.json");
    let endpoints: serde_json::Value = std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let (key, fallback) = match simulator {
        "payment-gateway" => ("payment_gateway", settings.payment_gateway_url()),
        "carrier" => ("carrier", settings.carrier_url()),
        other => anyhow::bail!("unknown simulator {other:?}: payment-gateway or carrier"),
    };
    Ok(endpoints[key].as_str().map_or(fallback, str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus::server::{NatsServer, ServerConfig};

    /// Of two servers, the one tried first may be frozen: the command connects to the other.
    #[tokio::test]
    async fn a_command_connects_past_a_frozen_server() {
        let dir = tempfile::tempdir().unwrap();
        let start = |name: &str| NatsServer::start(ServerConfig::new(dir.path().join(name)));
        let frozen = start("frozen")
            .await
            .expect("nats-server starts (run scripts/install-nats-server)");
        let alive = start("alive").await.unwrap();
        frozen.pause(true).unwrap();
        let settings = Settings {
            data_dir: dir.path().join("data"),
            nats_url: Some(format!("{},{}", frozen.url(), alive.url())),
            ..Settings::default()
        };
        // The client tries the servers in a random order: four commands, each half likely to
        // try the frozen one first.
        for _ in 0..4 {
            let client = connect(&settings).await.unwrap();
            assert_eq!(client.server_info().server_name, alive.name());
        }
        frozen.pause(false).unwrap();
    }
}
