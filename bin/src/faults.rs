//! `commerce faults <payment-gateway|carrier>`: show or change a simulator's faults at run time.

use actors::simulators::faults::Faults;
use actors::Settings;
use anyhow::Context;

use crate::client::simulator_url;

pub struct Change {
    pub latency_ms: Option<u64>,
    pub error_rate: Option<f64>,
    pub outage: Option<bool>,
    pub clear: bool,
}

pub async fn run(simulator: &str, change: Change, settings: Settings) -> anyhow::Result<()> {
    let url = format!("{}/v1/faults", simulator_url(simulator, &settings)?);
    let http = reqwest::Client::new();
    let unreachable = || format!("no simulator answers at {url}; is `commerce up` running?");
    let mut faults: Faults = http
        .get(&url)
        .send()
        .await
        .with_context(unreachable)?
        .json()
        .await?;
    let changing = change.clear
        || change.latency_ms.is_some()
        || change.error_rate.is_some()
        || change.outage.is_some();
    if changing {
        if change.clear {
            faults = Faults::default();
        }
        faults.latency_ms = change.latency_ms.unwrap_or(faults.latency_ms);
        faults.error_rate = change.error_rate.unwrap_or(faults.error_rate);
        faults.outage = change.outage.unwrap_or(faults.outage);
        let response = http
            .put(&url)
            .json(&faults)
            .send()
            .await
            .with_context(unreachable)?;
        anyhow::ensure!(
            response.status().is_success(),
            "refused: {}",
            response.text().await.unwrap_or_default()
        );
        faults = response.json().await?;
    }
    println!("{simulator}: {}", serde_json::to_string(&faults)?);
    Ok(())
}
