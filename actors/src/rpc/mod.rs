//! How components talk to each other besides events: typed request-reply over NATS micro.
//!
//! # Layout
//! - [`component`]: [`Component`], the one list of the system's components.
//! - [`error`]: [`DomainError`], what a component answers when it cannot do what was asked.
//! - [`endpoint`]: the [`Endpoint`] trait: a name, a request type and a reply type.
//! - [`route`]: [`Address`] and [`Routes`]: which component, or which partition of a service
//!   split by order, answers.
//! - [`client`]: [`call`], one request to `commerce.<component>.<endpoint>` ([`call_at`]: to
//!   an [`Address`]).
//! - [`server`]: [`Server`], a component's micro service and its endpoints' loops.
//!
//! Each component's endpoints are defined beside the component (`order::api`, `engine::api`,
//! `projection::api`); [`crate::contract`] lists them all in one place.

pub mod client;
pub mod component;
pub mod endpoint;
pub mod error;
pub mod route;
pub mod server;

pub use client::{call, call_at};
pub use component::{Component, UnknownComponent};
pub use endpoint::{subject as endpoint_subject, Endpoint};
pub use error::DomainError;
pub use route::{Address, Routes};
pub use server::Server;
