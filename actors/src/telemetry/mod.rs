//! What operators read of a running component: Prometheus metrics and OpenTelemetry traces.
//!
//! - [`metrics`]: the metric names, the recorder behind `GET /metrics`, and the samplers that
//!   turn a component's status (outbox, inbox, breakers) into gauges.
//! - [`trace`]: one span per handled event, per emitted event and per external call; one order is
//!   one trace (its id is the order id), joined across processes by the events' `traceparent`.
//!
//! Both cost nearly nothing when off: no recorder installed, no tracer provider installed.

pub mod metrics;
pub mod trace;
