//! The commerce services and the runtime that hosts them.
//!
//! # Layout
//! - [`settings`]: typed settings, layered: defaults, TOML file, `COMMERCE_*` environment, flags.
//! - [`runtime`]: brings the system up: the broker (an embedded nats-server child process, or a
//!   given URL), stream provisioning, and a clean shutdown.
//!
//! The service actor groups (order, payment, inventory, store, shipment, recommendation,
//! projection, gateway) build on [`runtime::Runtime`] and are tracked in the issue tracker.
#![forbid(unsafe_code)]

pub mod runtime;
pub mod settings;

pub use runtime::Runtime;
pub use settings::Settings;
