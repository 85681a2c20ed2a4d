//! The commerce services as actix actor groups, the saga between them, and what hosts them.
//!
//! # Layout
//! - [`engine`]: what every service shares: event-sourced aggregates, batch reaction with one
//!   commit and one flush, the service actor, and the host (consumers, relay, micro endpoint).
//! - [`events`]: the saga's contract: every service's events, and the choreography.
//! - [`order`], [`payment`], [`inventory`], [`store`], [`shipment`], [`recommendation`]: the
//!   services, each with its `events`, its `aggregate` (decide and apply), and its reactions.
//! - [`projection`]: the CQRS read model (`order_read_model`), rebuilt by replay on demand.
//! - [`catalog`]: the seeded catalog, order validation, and the deterministic test triggers.
//! - [`external`]: the external systems' wire types and clients (payment gateway, carrier),
//!   over HTTP, with failures split into "retry later" and "refused". Services and simulators
//!   both depend on it, never on each other.
//! - [`resilience`]: bulkhead and circuit breaker guarding every external and fan-out call.
//! - [`simulators`]: the payment gateway and the carrier, over loopback HTTP, with fault knobs.
//! - [`gateway`]: the HTTP API (actix-web), talking to the services over NATS.
//! - [`http`]: running an actix-web server on the current actix system (gateway, simulators).
//! - [`system`]: starting everything in one process, or one component per process.
//! - [`settings`], [`runtime`]: layered settings; the broker and its streams.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod codec;
pub mod contract;
pub mod engine;
pub mod events;
pub mod external;
pub mod gateway;
pub mod http;
pub mod inventory;
pub mod order;
pub mod payment;
pub mod projection;
pub mod recommendation;
pub mod resilience;
pub mod rpc;
pub mod runtime;
pub mod settings;
pub mod shipment;
pub mod simulators;
pub mod store;
pub mod system;

pub use rpc::Component;
pub use runtime::Runtime;
pub use settings::Settings;
pub use system::System;
