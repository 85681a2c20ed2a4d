//! Settings, layered (later wins): built-in defaults, an optional TOML file, `COMMERCE_*`
//! environment variables (`COMMERCE_DATA_DIR`, `COMMERCE_NATS_URL`, nested with `__`, e.g.
//! `COMMERCE_STREAMS__DUPLICATE_WINDOW=300`), `NATS_URL`, then command-line flags.

use std::path::{Path, PathBuf};

use bus::StreamSettings;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use storage::StoreConfig;

use crate::resilience::ResilienceSettings;
use crate::simulators::SimulatorSettings;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Root of every service's database and of the embedded broker's store.
    pub data_dir: PathBuf,
    /// Use this NATS server instead of starting one.
    pub nats_url: Option<String>,
    /// Port of the embedded nats-server; if taken, a free one is picked.
    pub nats_port: u16,
    /// Run the embedded nats-server with `sync_interval: always` (fsync every write).
    pub nats_sync_always: bool,
    /// Where the HTTP gateway listens (port 0: any free port).
    pub http_addr: String,
    /// The payment gateway's base URL (default: the simulator's address).
    pub payment_gateway_url: Option<String>,
    /// The carrier's base URL (default: the simulator's address).
    pub carrier_url: Option<String>,
    /// A fetched event not acknowledged within this long (its consumer died) is redelivered, in ms.
    pub ack_wait_ms: u64,
    /// An event whose handling keeps failing (a dependency is down) is retried with backoff
    /// (`retry_backoff_ms`) this many times, then moved to `DLQ`.
    pub max_deliver: i64,
    /// A saga step whose dependency stays unavailable this long (seconds, from when the order
    /// was placed) is given up: the failure event is emitted and compensation runs.
    pub saga_deadline_secs: u64,
    /// Delay before the n-th redelivery of a failed event, in ms (the last one repeats).
    pub retry_backoff_ms: Vec<u64>,
    /// Sent outbox rows are kept this long (seconds) for inspection, then deleted.
    pub outbox_retention_secs: u64,
    /// Inbox marks (ids of applied events) are kept this long (seconds). Far above any
    /// redelivery window; a redelivery older than this would be applied again.
    pub inbox_retention_secs: u64,
    /// How often the shipment service polls the carrier's tracking feed, in ms.
    pub tracking_poll_ms: u64,
    pub simulators: SimulatorSettings,
    /// Bulkhead and circuit breaker of every external and fan-out dependency.
    pub resilience: ResilienceSettings,
    /// Rebuild the service's database from its stream at start (`commerce run <service> --rebuild`).
    /// An empty database is rebuilt anyway.
    pub rebuild: bool,
    pub streams: StreamSettings,
    pub store: StoreConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("data"),
            nats_url: None,
            nats_port: 4222,
            nats_sync_always: false,
            http_addr: "127.0.0.1:8080".into(),
            payment_gateway_url: None,
            carrier_url: None,
            ack_wait_ms: 30_000,
            // Forward steps end at the saga deadline; this bounds compensations waiting for a
            // dependency: about 4 hours at the 30 s backoff.
            max_deliver: 500,
            saga_deadline_secs: 120,
            retry_backoff_ms: vec![500, 2_000, 10_000, 30_000],
            outbox_retention_secs: 24 * 3600,
            inbox_retention_secs: 7 * 24 * 3600,
            tracking_poll_ms: 200,
            simulators: SimulatorSettings::default(),
            resilience: ResilienceSettings::default(),
            rebuild: false,
            streams: StreamSettings::default(),
            store: StoreConfig::default(),
        }
    }
}

/// Flag values given on the command line (`None`: not given).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct SettingsError(#[from] Box<figment::Error>);

impl Settings {
    /// Load the layers. A missing `file` is an error (it was asked for); unknown keys are errors.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Settings, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(SettingsError(Box::new(figment::Error::from(format!(
                    "config file {} not found",
                    file.display()
                )))));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment
            // COMMERCE_CONFIG names the file (a flag's env fallback), not a setting.
            .merge(Env::prefixed("COMMERCE_").ignore(&["config"]).split("__"))
            .merge(Env::raw().only(&["NATS_URL"]))
            .merge(Serialized::defaults(flags));
        figment.extract().map_err(|e| SettingsError(Box::new(e)))
    }

    pub fn payment_gateway_url(&self) -> String {
        self.payment_gateway_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.simulators.payment_gateway_addr))
    }

    pub fn carrier_url(&self) -> String {
        self.carrier_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.simulators.carrier_addr))
    }

    /// The database directory of one service.
    pub fn service_dir(&self, service: &str) -> PathBuf {
        self.data_dir.join(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("commerce.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\nnats_port = 5000\n[streams]\nduplicate_window = 300\n",
        )
        .unwrap();
        let flags = Overrides {
            nats_port: Some(6000),
            ..Overrides::default()
        };
        let s = Settings::load(Some(&file), &flags).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/from/file"));
        assert_eq!(s.nats_port, 6000, "flags beat the file");
        assert_eq!(s.streams.duplicate_window.as_secs(), 300);

        std::fs::write(&file, "data_dri = \"typo\"\n").unwrap();
        let err = Settings::load(Some(&file), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("data_dri"), "{err}");
        assert!(Settings::load(Some(&dir.path().join("missing.toml")), &flags).is_err());
    }
}
