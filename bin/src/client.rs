//! How client commands (`status`, `order`, `projection`, `faults`, `bench`) reach the broker.

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

/// Connect as the operator: with `--nats-creds` (or `NATS_CREDS`), else the operator's
/// credentials that `commerce up` keeps under the data dir.
pub(crate) async fn connect(settings: &Settings) -> anyhow::Result<async_nats::Client> {
    let url = client_url(settings);
    let keyring = Keyring::load(settings, &[BusUser::Operator])?;
    let mut options = async_nats::ConnectOptions::new()
        .name("commerce-cli")
        .ping_interval(bus::PING_INTERVAL)
        .custom_inbox_prefix(bus::inbox_prefix(BusUser::Operator.name()));
    if let Some(credentials) = keyring.get(BusUser::Operator) {
        options = credentials.apply(options).await?;
    }
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        options.connect(bus::server_urls(&url).as_slice()),
    )
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
