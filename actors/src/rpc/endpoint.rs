//! An endpoint: `commerce.<component>.<NAME>`, a JSON request in, a JSON reply out.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// One request-reply endpoint of a component. An empty request body reads as JSON `null`, so
/// endpoints that take nothing (`()`) answer a bare `nats req commerce.order.status ''`.
pub trait Endpoint: 'static {
    const NAME: &'static str;
    type Request: Serialize + DeserializeOwned + Send + 'static;
    type Reply: Serialize + DeserializeOwned + Send + 'static;
}

/// The subject `commerce.<component>.<endpoint>`.
pub fn subject(component: super::Component, endpoint: &str) -> String {
    format!("commerce.{component}.{endpoint}")
}
