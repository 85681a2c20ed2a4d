//! Every component's API in one place. Components talk through events (the saga,
//! [`crate::events`]) and, for clients and operators, through typed request-reply endpoints on
//! NATS micro: `commerce.<component>.<endpoint>`, called with [`crate::rpc::call`].
//!
//! | component | endpoint | request | reply |
//! |---|---|---|---|
//! | every service, projection | `status` | nothing | [`ComponentStatus`] |
//! | every service | `get` | order id (`null` for one-aggregate services) | the service's `View` |
//! | every service | `part` | order id | the service's `Part` of the order |
//! | every service | `slow` | [`SlowRequest`] | [`SlowRequest`] |
//! | order | `place` | [`PlaceRequest`] | [`Placed`] |
//! | order | `cancel` | [`CancelRequest`] | [`Cancelled`] |
//! | projection | `get` | order id | [`OrderReadModel`] |
//! | projection | `rebuild` | nothing | [`RebuildStarted`] |
//!
//! Errors are [`DomainError`](crate::rpc::DomainError) kinds, carried as the micro error code.
//! The generic endpoints take the service as a type (`Get<InventoryService>`), so the services
//! are named here too, with what their `get` and `part` answer.

pub use crate::engine::api::{
    ComponentStatus, Get, Part, ReadModelStatus, Slow, SlowRequest, Status,
};
pub use crate::order::aggregate::CancelOutcome;
pub use crate::order::api::{
    Cancel, CancelRequest, Cancelled, IdempotencyKey, OrderView, Place, PlaceRequest, Placed,
};
pub use crate::projection::api::{ReadOrder, Rebuild, RebuildStarted};
pub use crate::projection::model::OrderReadModel;

pub use crate::engine::Service;
pub use crate::inventory::{InventoryPart, InventoryService, WarehouseStock};
pub use crate::order::OrderService;
pub use crate::payment::aggregate::Payment;
pub use crate::payment::PaymentService;
pub use crate::recommendation::aggregate::CoPurchases;
pub use crate::recommendation::{RecommendationPart, RecommendationService};
pub use crate::shipment::aggregate::Shipment;
pub use crate::shipment::ShipmentService;
pub use crate::store::{StorePart, StoreService, StoreStock};
