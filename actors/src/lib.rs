//! The commerce services as actix actor groups, the saga between them, and what hosts them.
//!
//! # Layout
//! Bottom to top (each module uses only those above it in this list):
//! - [`telemetry`]: Prometheus metrics and OpenTelemetry traces; every module may record.
//! - [`rpc`]: [`Component`] (the one list of components), [`rpc::DomainError`], the typed
//!   [`rpc::Endpoint`] and its generic [`rpc::call`] / [`rpc::Server`] pair over NATS micro.
//! - [`codec`]: events in and out of their CloudEvents envelopes.
//! - [`catalog`]: the seeded catalog, order validation, and the deterministic test triggers.
//! - [`events`]: the saga's contract: every service's events, and the choreography.
//! - [`resilience`]: bulkhead and circuit breaker guarding every external and fan-out call.
//! - [`settings`]: layered, validated settings.
//! - [`external`]: the external systems' wire types and clients (payment gateway, carrier),
//!   over HTTP, with failures split into "retry later" and "refused". Services and simulators
//!   both depend on it, never on each other.
//! - [`engine`]: what every service shares: event-sourced aggregates, the engine's batch phases
//!   (one commit, one flush), the service actor, the endpoints every service answers, and the
//!   host (start-up, consumers, relay, micro service, retention).
//! - [`recent`]: what one-aggregate services keep of closed orders (bounded, not the history).
//! - [`stock`]: stock split by SKU: an order's lines reserved shard by shard.
//! - [`order`], [`payment`], [`inventory`], [`store`], [`shipment`], [`recommendation`]: the
//!   services, each with its `aggregate` (decide and apply) and its `Service`.
//! - [`projection`]: the CQRS read model (`order_read_model`), rebuilt by replay on demand.
//! - [`contract`]: every component's endpoints in one table.
//! - [`access`]: the broker identities and what each may publish and subscribe to.
//! - [`runtime`]: the broker (embedded or not), its credentials, and the streams.
//! - [`http`], [`simulators`]: running an actix-web server; the simulated external systems.
//! - [`gateway`]: the HTTP API (actix-web): typed calls to the components, the only place
//!   that knows HTTP status codes.
//! - [`admin`]: the operators' listener: `/metrics`, the live dashboard, one order's history.
//! - [`system`]: starting everything in one process, or one component per process.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
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
pub mod recent;
pub mod recommendation;
pub mod resilience;
pub mod rpc;
pub mod runtime;
pub mod settings;
pub mod shipment;
pub mod simulators;
pub mod stock;
pub mod store;
pub mod system;
pub mod telemetry;

pub use rpc::Component;
pub use runtime::Runtime;
pub use settings::Settings;
pub use system::System;
