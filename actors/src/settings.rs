//! Settings, layered (later wins): built-in defaults, an optional TOML file, `COMMERCE_*`
//! environment variables (`COMMERCE_DATA_DIR`, `COMMERCE_NATS_URL`, nested with `__`, e.g.
//! `COMMERCE_STREAMS__DUPLICATE_WINDOW_SECS=300`), `NATS_URL`, then command-line flags.
//!
//! Every duration is an integer whose key names its unit (`_ms` or `_secs`), read as a
//! [`Duration`] through a method. Values that cannot work are refused at load, naming the key,
//! rather than adjusted where they are used.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bus::StreamSettings;

use crate::rpc::{Address, Routes};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use storage::StoreConfig;

use crate::resilience::breaker::Window;
use crate::resilience::ResilienceSettings;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Root of every service's database and of the embedded broker's store.
    pub data_dir: PathBuf,
    /// Use this NATS server instead of starting one.
    pub nats_url: Option<String>,
    /// This process's broker credentials: an nkey seed file or a NATS `.creds` file (also:
    /// `NATS_CREDS`). Default: its own file under `<data-dir>/credentials/`, if there is one.
    pub nats_creds: Option<PathBuf>,
    /// Authentication and permissions: on the embedded broker (one identity per component) and
    /// on the HTTP API (customer and operator tokens). Off only to measure what they cost.
    pub auth: bool,
    /// Port of the embedded nats-server; if taken, a free one is picked.
    pub nats_port: u16,
    /// Run the embedded nats-server with `sync_interval: always` (fsync every write).
    pub nats_sync_always: bool,
    /// Nodes of the embedded broker: 1 is one nats-server; 3 to 7 a cluster on loopback
    /// (`<data-dir>/nats/node-<i>`) whose streams keep `min(nodes, 3)` replicas, so the broker
    /// rides through the loss of a minority of its nodes.
    pub nats_cluster: usize,
    /// Cores each embedded nats-server may run on at once (its `GOMAXPROCS`). Default: half of
    /// this machine's, at least 1. Its garbage collector takes every core it may for a second or
    /// two once its state is large, and the services on the same machine wait (README: soak).
    pub nats_cores: Option<usize>,
    /// Where the HTTP gateway listens (port 0: any free port).
    pub http_addr: String,
    /// The gateway's admin side (`/metrics` of its process, the `/dashboard`): an operators'
    /// listener, unauthenticated, so keep it on a private interface (port 0: any free port).
    pub admin_addr: String,
    /// Where a component other than the gateway serves its own `/metrics` when it runs in its own
    /// process (`commerce run <component> --metrics ADDR`); none by default.
    pub metrics_addr: Option<String>,
    /// The payment gateway's base URL (default: the simulator's address).
    pub payment_gateway_url: Option<String>,
    /// The carrier's base URL (default: the simulator's address).
    pub carrier_url: Option<String>,
    /// A fetched event not acknowledged within this long (its consumer died) is redelivered, in ms
    /// (at least 1000).
    pub ack_wait_ms: u64,
    /// An event whose handling keeps failing (a dependency is down) is retried with backoff
    /// (`retry_backoff_ms`) this many times, then moved to `DLQ` (at least 1).
    pub max_deliver: i64,
    /// A saga step whose dependency stays unavailable this long (seconds, from when the order
    /// was placed) is given up: payment abandons (and voids by key); shipment stops booking and
    /// asks the carrier what it booked, compensating only on its word (`ShipmentBookingOverdue`).
    pub saga_deadline_secs: u64,
    /// A saga still open this long (seconds) after its last event is stuck: `commerce status`
    /// names it.
    pub stuck_after_secs: u64,
    /// Delay before the n-th redelivery of a failed event, in ms (the last one repeats).
    pub retry_backoff_ms: Vec<u64>,
    /// Sent outbox rows are kept this long (seconds) for inspection, then deleted.
    pub outbox_retention_secs: u64,
    /// Inbox marks (ids of applied events) are kept this long (seconds). Far above any
    /// redelivery window; a redelivery older than this would be applied again. At least two
    /// ack waits and the streams' duplicate window.
    pub inbox_retention_secs: u64,
    /// How often the shipment service polls the carrier's tracking feed, in ms (at least 10).
    pub tracking_poll_ms: u64,
    pub simulators: SimulatorSettings,
    /// Bulkhead and circuit breaker of every external and fan-out dependency.
    pub resilience: ResilienceSettings,
    /// How the HTTP API checks its callers' tokens.
    pub api: ApiSettings,
    /// Rebuild the service's database from its stream at start (`commerce run <service> --rebuild`).
    /// An empty database is rebuilt anyway.
    pub rebuild: bool,
    /// This process is instance `instance` of its service (`commerce run payment --instance
    /// b`): it owns the service's partition only while it holds the lease on it, waits as a
    /// standby while another instance does, and keeps its database under
    /// `<data-dir>/<service>@<instance>`, rebuilt from the stream each time it takes over.
    /// `None`: the only instance, no lease (`commerce up`).
    pub instance: Option<String>,
    /// The partitions this instance is the home of (`--home 0,2`): it takes them at once and
    /// asks for them back from whoever holds them; the others it takes only when their owner is
    /// gone, and gives back when asked. `None`: every partition is its home.
    pub home: Option<Vec<u32>>,
    pub streams: StreamSettings,
    pub store: StoreConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("data"),
            nats_url: None,
            nats_creds: None,
            auth: true,
            nats_port: 4222,
            nats_sync_always: false,
            nats_cluster: 1,
            nats_cores: None,
            http_addr: "127.0.0.1:8080".into(),
            admin_addr: "127.0.0.1:9464".into(),
            metrics_addr: None,
            payment_gateway_url: None,
            carrier_url: None,
            ack_wait_ms: 30_000,
            // Forward steps end at the saga deadline; this bounds compensations waiting for a
            // dependency: about 4 hours at the 30 s backoff.
            max_deliver: 500,
            saga_deadline_secs: 120,
            stuck_after_secs: 300,
            retry_backoff_ms: vec![500, 2_000, 10_000, 30_000],
            outbox_retention_secs: 24 * 3600,
            inbox_retention_secs: 7 * 24 * 3600,
            tracking_poll_ms: 200,
            simulators: SimulatorSettings::default(),
            resilience: ResilienceSettings::default(),
            api: ApiSettings::default(),
            rebuild: false,
            instance: None,
            home: None,
            streams: StreamSettings::default(),
            store: StoreConfig::default(),
        }
    }
}

/// Where the simulators listen and how fast the carrier's parcels move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorSettings {
    /// Where the payment gateway simulator listens (port 0: any free port).
    pub payment_gateway_addr: String,
    /// Where the carrier simulator listens (port 0: any free port).
    pub carrier_addr: String,
    /// A booked parcel is picked up after this long, in ms (unless its address holds it).
    pub carrier_pickup_ms: u64,
    /// A picked-up parcel is delivered after this long, in ms.
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

impl SimulatorSettings {
    pub fn carrier_pickup(&self) -> Duration {
        Duration::from_millis(self.carrier_pickup_ms)
    }

    pub fn carrier_delivery(&self) -> Duration {
        Duration::from_millis(self.carrier_delivery_ms)
    }
}

/// The HTTP API's bearer tokens (JWTs). By default the gateway signs its own (HS256, key under
/// `<data-dir>/credentials/`); with an identity provider, give its RS256 public key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// PEM file of the identity provider's RS256 public key.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Accept only tokens with this `iss`.
    pub issuer: Option<String>,
    /// Accept only tokens with this `aud`.
    pub audience: Option<String>,
}

/// Flag values given on the command line (`None`: not given).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_creds: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_sync_always: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_cluster: Option<usize>,
}

/// Why settings were refused. Fix the named file, key or value and start again.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file that was asked for does not exist.
    #[error("invalid settings: config file {} not found", .0.display())]
    MissingFile(PathBuf),
    /// A layer does not parse, or names an unknown key, or a value has the wrong type.
    #[error("invalid settings: {0}")]
    Unreadable(#[source] Box<figment::Error>),
    /// A value that parses but cannot work; `reason` starts with the value given.
    #[error("invalid settings: {key} = {reason}")]
    Invalid { key: String, reason: String },
}

impl Settings {
    /// Load the layers, then [`validate`](Settings::validate) the result. A missing `file` is an
    /// error (it was asked for); unknown keys are errors.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Settings, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(SettingsError::MissingFile(file.to_path_buf()));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment
            // COMMERCE_CONFIG names the file (a flag's env fallback), not a setting.
            .merge(Env::prefixed("COMMERCE_").ignore(&["config"]).split("__"))
            .merge(Env::raw().only(&["NATS_URL", "NATS_CREDS"]))
            .merge(Serialized::defaults(flags));
        let settings: Settings = figment
            .extract()
            .map_err(|e| SettingsError::Unreadable(Box::new(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Refuse values that cannot work, naming the first bad key (its path in the TOML file).
    pub fn validate(&self) -> Result<(), SettingsError> {
        check(
            "ack_wait_ms",
            self.ack_wait_ms,
            self.ack_wait_ms >= 1_000,
            "must be at least 1000",
        )?;
        check(
            "max_deliver",
            self.max_deliver,
            self.max_deliver >= 1,
            "must be at least 1",
        )?;
        check(
            "nats_cluster",
            self.nats_cluster,
            self.nats_cluster == 1 || (3..=7).contains(&self.nats_cluster),
            "must be 1, or within 3..=7 (two nodes cannot lose either one)",
        )?;
        if let Some(cores) = self.nats_cores {
            check("nats_cores", cores, cores >= 1, "must be at least 1")?;
        }
        check(
            "tracking_poll_ms",
            self.tracking_poll_ms,
            self.tracking_poll_ms >= 10,
            "must be at least 10",
        )?;

        let resilience = &self.resilience;
        check(
            "resilience.bulkhead_max_concurrent",
            resilience.bulkhead_max_concurrent,
            (1..=tokio::sync::Semaphore::MAX_PERMITS).contains(&resilience.bulkhead_max_concurrent),
            &format!("must be within 1..={}", tokio::sync::Semaphore::MAX_PERMITS),
        )?;
        let breaker = &resilience.breaker;
        match breaker.window {
            Window::Count(n) => check(
                "resilience.breaker.window.count",
                n,
                n >= 1,
                "must be at least 1",
            )?,
            Window::TimeMs(ms) => check(
                "resilience.breaker.window.time_ms",
                ms,
                ms >= 1,
                "must be at least 1",
            )?,
        }
        for (key, rate) in [
            (
                "resilience.breaker.failure_rate_threshold",
                breaker.failure_rate_threshold,
            ),
            (
                "resilience.breaker.slow_call_rate_threshold",
                breaker.slow_call_rate_threshold,
            ),
        ] {
            // A percent; at 0 every window would open the breaker. Also refuses NaN.
            let percent = rate > 0.0 && rate <= 100.0;
            check(
                key,
                rate,
                percent,
                "must be a percent above 0 and at most 100",
            )?;
        }
        check(
            "resilience.breaker.slow_call_duration_ms",
            breaker.slow_call_duration_ms,
            breaker.slow_call_duration_ms >= 1,
            "must be at least 1 (at 0 every call is slow)",
        )?;
        check(
            "resilience.breaker.permitted_in_half_open",
            breaker.permitted_in_half_open,
            breaker.permitted_in_half_open >= 1,
            "must be at least 1 (with no trial calls the breaker never closes)",
        )?;
        check(
            "resilience.breaker.half_open_timeout_ms",
            breaker.half_open_timeout_ms,
            breaker.half_open_timeout_ms >= 1,
            "must be at least 1 (at 0 half-open reopens before any trial)",
        )?;

        if let Some(instance) = &self.instance {
            check(
                "instance",
                instance,
                (1..=32).contains(&instance.len())
                    && instance
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "must be 1 to 32 letters, digits, '-' or '_'",
            )?;
        }
        if let Some(home) = &self.home {
            // Against the partition count when joining the system (`Runtime::join`).
            check(
                "home",
                format!("{home:?}"),
                self.instance.is_some() && !home.is_empty(),
                "names partitions of an instance (--home with --instance)",
            )?;
        }
        let streams = &self.streams;
        check(
            "streams.lease_ttl_ms",
            streams.lease_ttl_ms,
            (400..=600_000).contains(&streams.lease_ttl_ms),
            "must be within 400..=600000 (renewed every quarter of it)",
        )?;
        check(
            "streams.partitions",
            streams.partitions,
            (1..=bus::Partitions::MAX).contains(&streams.partitions),
            &format!("must be within 1..={}", bus::Partitions::MAX),
        )?;
        check(
            "streams.duplicate_window_secs",
            streams.duplicate_window_secs,
            streams.max_age_secs == 0 || streams.duplicate_window_secs <= streams.max_age_secs,
            &format!(
                "must be at most streams.max_age_secs ({}) when that is set",
                streams.max_age_secs
            ),
        )?;
        // The inbox is what recognizes an event applied already when it comes again: after a
        // lost ack (one ack wait later, and again if that ack is lost too), or published twice
        // once the broker's duplicate window is over. Forgetting sooner than either lets it apply
        // the event twice.
        let inbox_floor = streams
            .duplicate_window_secs
            .max(self.ack_wait_ms.saturating_mul(2).div_ceil(1_000));
        check(
            "inbox_retention_secs",
            self.inbox_retention_secs,
            self.inbox_retention_secs >= inbox_floor,
            &format!(
                "must be at least {inbox_floor}: two ack waits (ack_wait_ms = {}) and the \
                 broker's duplicate window (streams.duplicate_window_secs = {}), or a \
                 redelivered event could be applied twice",
                self.ack_wait_ms, streams.duplicate_window_secs
            ),
        )?;
        Ok(())
    }

    /// How long a fetched, unacknowledged event waits before redelivery.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms)
    }

    /// Delay before the n-th redelivery of a failed event (the last one repeats).
    pub fn retry_backoff(&self) -> Vec<Duration> {
        self.retry_backoff_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect()
    }

    /// How long a saga step may stay unavailable, from the saga's start, before it is given up.
    /// A value too large for a date-time duration means "never".
    pub fn saga_deadline(&self) -> chrono::Duration {
        i64::try_from(self.saga_deadline_secs)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .unwrap_or(chrono::Duration::MAX)
    }

    pub fn stuck_after(&self) -> chrono::Duration {
        i64::try_from(self.stuck_after_secs)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .unwrap_or(chrono::Duration::MAX)
    }

    pub fn outbox_retention(&self) -> Duration {
        Duration::from_secs(self.outbox_retention_secs)
    }

    pub fn inbox_retention(&self) -> Duration {
        Duration::from_secs(self.inbox_retention_secs)
    }

    pub fn tracking_poll(&self) -> Duration {
        Duration::from_millis(self.tracking_poll_ms)
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

    /// The database directory of one service (of this instance of it).
    pub fn service_dir(&self, service: &str) -> PathBuf {
        match &self.instance {
            Some(instance) => self.data_dir.join(format!("{service}@{instance}")),
            None => self.data_dir.join(service),
        }
    }

    /// The database directory of what `address` names: the service's, or beside it one per
    /// partition of a split service (`payment.p2`, `payment@a.p2`).
    pub fn host_dir(&self, address: Address) -> PathBuf {
        let dir = self.service_dir(address.component.name());
        match address.partition {
            None => dir,
            Some(k) => {
                let mut name = dir.into_os_string();
                name.push(format!(".p{k}"));
                name.into()
            }
        }
    }

    /// Is this instance the home of `partition`?
    pub fn is_home(&self, partition: u32) -> bool {
        self.home
            .as_ref()
            .is_none_or(|home| home.contains(&partition))
    }

    /// [`Settings::nats_cores`], or half of the cores this process may use (at least 1).
    pub fn nats_cores(&self) -> usize {
        self.nats_cores.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
        })
    }

    /// Who answers what: which services are split by the streams' partitions.
    pub fn routes(&self) -> Routes {
        // `validate` keeps the count in range; out of it, one partition is the safe reading.
        Routes::new(self.streams.partitions().unwrap_or(bus::Partitions::ONE))
    }
}

/// `Ok` if `valid`, else the refusal of `key = value` for `rule`.
fn check(key: &str, value: impl Display, valid: bool, rule: &str) -> Result<(), SettingsError> {
    if valid {
        return Ok(());
    }
    Err(SettingsError::Invalid {
        key: key.to_string(),
        reason: format!("{value}: {rule}"),
    })
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
            "data_dir = \"/from/file\"\nnats_port = 5000\n[streams]\nduplicate_window_secs = 300\n",
        )
        .unwrap();
        let flags = Overrides {
            nats_port: Some(6000),
            ..Overrides::default()
        };
        let s = Settings::load(Some(&file), &flags).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/from/file"));
        assert_eq!(s.nats_port, 6000, "flags beat the file");
        assert_eq!(s.streams.duplicate_window(), Duration::from_secs(300));

        std::fs::write(&file, "data_dri = \"typo\"\n").unwrap();
        let err = Settings::load(Some(&file), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("data_dri"), "{err}");
        assert!(Settings::load(Some(&dir.path().join("missing.toml")), &flags).is_err());
    }

    #[test]
    fn values_that_cannot_work_are_refused_at_load_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("commerce.toml");
        let refused = |toml: &str| {
            std::fs::write(&file, toml).unwrap();
            match Settings::load(Some(&file), &Overrides::default()) {
                Err(SettingsError::Invalid { key, reason }) => (key, reason),
                other => panic!("{toml:?} was not refused as invalid: {other:?}"),
            }
        };
        let (key, reason) = refused("ack_wait_ms = 500\n");
        assert_eq!(key, "ack_wait_ms");
        assert_eq!(reason, "500: must be at least 1000");
        assert_eq!(refused("max_deliver = 0\n").0, "max_deliver");
        assert_eq!(refused("tracking_poll_ms = 5\n").0, "tracking_poll_ms");
        assert_eq!(refused("nats_cores = 0\n").0, "nats_cores");
        assert_eq!(
            refused("[resilience.breaker]\nfailure_rate_threshold = 150.0\n").0,
            "resilience.breaker.failure_rate_threshold"
        );
        assert_eq!(
            refused("[resilience.breaker]\nwindow = { count = 0 }\n").0,
            "resilience.breaker.window.count"
        );
        assert_eq!(
            refused("[resilience]\nbulkhead_max_concurrent = 0\n").0,
            "resilience.bulkhead_max_concurrent"
        );
        assert_eq!(
            refused("[streams]\nmax_age_secs = 60\nduplicate_window_secs = 120\n").0,
            "streams.duplicate_window_secs"
        );
        let (key, reason) = refused("inbox_retention_secs = 90\n");
        assert_eq!(key, "inbox_retention_secs");
        assert!(reason.starts_with("90: must be at least 120:"), "{reason}");
        let (key, reason) = refused("ack_wait_ms = 100000\ninbox_retention_secs = 150\n");
        assert_eq!(key, "inbox_retention_secs");
        assert!(reason.contains("at least 200"), "{reason}");

        let err = SettingsError::Invalid {
            key: "ack_wait_ms".into(),
            reason: "500: must be at least 1000".into(),
        };
        assert_eq!(
            err.to_string(),
            "invalid settings: ack_wait_ms = 500: must be at least 1000"
        );
    }

    #[test]
    fn the_embedded_broker_gets_half_the_cores_unless_told() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Settings::default().nats_cores(), (cores / 2).max(1));
        let told = Settings {
            nats_cores: Some(3),
            ..Settings::default()
        };
        assert_eq!(told.nats_cores(), 3);
    }

    #[test]
    fn the_defaults_are_valid_and_every_rule_names_its_key() {
        assert!(Settings::default().validate().is_ok());
        let invalid = |change: fn(&mut Settings)| {
            let mut s = Settings::default();
            change(&mut s);
            match s.validate() {
                Err(SettingsError::Invalid { key, .. }) => key,
                other => panic!("not refused: {other:?}"),
            }
        };
        let breaker = "resilience.breaker";
        assert_eq!(
            invalid(|s| s.resilience.breaker.slow_call_rate_threshold = f64::NAN),
            format!("{breaker}.slow_call_rate_threshold")
        );
        assert_eq!(
            invalid(|s| s.resilience.breaker.window = Window::TimeMs(0)),
            format!("{breaker}.window.time_ms")
        );
        assert_eq!(
            invalid(|s| s.resilience.breaker.slow_call_duration_ms = 0),
            format!("{breaker}.slow_call_duration_ms")
        );
        assert_eq!(
            invalid(|s| s.resilience.breaker.permitted_in_half_open = 0),
            format!("{breaker}.permitted_in_half_open")
        );
        assert_eq!(
            invalid(|s| s.resilience.breaker.half_open_timeout_ms = 0),
            format!("{breaker}.half_open_timeout_ms")
        );
        assert_eq!(invalid(|s| s.streams.partitions = 0), "streams.partitions");
    }

    #[test]
    fn an_absurd_saga_deadline_means_never() {
        let s = Settings {
            saga_deadline_secs: u64::MAX,
            ..Settings::default()
        };
        assert_eq!(s.saga_deadline(), chrono::Duration::MAX);
        assert_eq!(
            Settings::default().saga_deadline(),
            chrono::Duration::seconds(120)
        );
    }
}
