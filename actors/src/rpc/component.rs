//! The system's components: what `commerce run` starts, what answers `status`, what `nats micro
//! ls` lists. The only place their names are spelled.

use std::fmt;
use std::str::FromStr;

use bus::Domain;

/// One component of the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Order,
    Payment,
    Inventory,
    Store,
    Shipment,
    Recommendation,
    Projection,
    Gateway,
    Simulators,
}

impl Component {
    /// The six services, in saga order.
    pub const SERVICES: [Component; 6] = [
        Component::Order,
        Component::Payment,
        Component::Inventory,
        Component::Store,
        Component::Shipment,
        Component::Recommendation,
    ];

    /// Everything `commerce run` can start.
    pub const ALL: [Component; 9] = [
        Component::Order,
        Component::Payment,
        Component::Inventory,
        Component::Store,
        Component::Shipment,
        Component::Recommendation,
        Component::Projection,
        Component::Gateway,
        Component::Simulators,
    ];

    /// Its name: database directory, durable consumer, micro service, `commerce run` argument.
    pub fn name(self) -> &'static str {
        match self {
            Component::Order => "order",
            Component::Payment => "payment",
            Component::Inventory => "inventory",
            Component::Store => "store",
            Component::Shipment => "shipment",
            Component::Recommendation => "recommendation",
            Component::Projection => "projection",
            Component::Gateway => "gateway",
            Component::Simulators => "simulators",
        }
    }

    /// Does it keep its state per order (so it can be split by the orders' partitions)? The
    /// services whose `Service::PLACEMENT` is `PerOrder`.
    pub fn keeps_orders(self) -> bool {
        matches!(
            self,
            Component::Order | Component::Payment | Component::Shipment
        )
    }

    /// Does it keep stock per SKU (so it can be split by SKU, one shard per partition)? The
    /// services whose `Service::PLACEMENT` is `BySku`.
    pub fn keeps_stock(self) -> bool {
        matches!(self, Component::Inventory | Component::Store)
    }

    /// The service that owns `domain`'s stream.
    pub const fn owner(domain: Domain) -> Component {
        match domain {
            Domain::Orders => Component::Order,
            Domain::Payments => Component::Payment,
            Domain::Inventory => Component::Inventory,
            Domain::Stores => Component::Store,
            Domain::Shipments => Component::Shipment,
            Domain::Recommendations => Component::Recommendation,
        }
    }

    /// The domain whose events it publishes (a service's own stream).
    pub fn owned_domain(self) -> Option<Domain> {
        Domain::ALL
            .into_iter()
            .find(|d| Component::owner(*d) == self)
    }

    /// The components with a micro service answering `status`: the services and the projection.
    pub fn with_status() -> impl Iterator<Item = Component> {
        Component::SERVICES
            .into_iter()
            .chain([Component::Projection])
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl serde::Serialize for Component {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Component {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A name that is no component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown component {0:?}; one of: {names}", names = names())]
pub struct UnknownComponent(pub String);

fn names() -> String {
    Component::ALL.map(Component::name).join(", ")
}

impl FromStr for Component {
    type Err = UnknownComponent;

    fn from_str(name: &str) -> Result<Component, UnknownComponent> {
        Component::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| UnknownComponent(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_pad_like_strings_in_tables() {
        assert_eq!(format!("[{:<8}]", Component::Order), "[order   ]");
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for component in Component::ALL {
            assert_eq!(component.name().parse(), Ok(component));
        }
        let err = "paymnet".parse::<Component>().unwrap_err();
        assert!(err.to_string().contains("order, payment"), "{err}");
    }

    #[test]
    fn each_domain_is_owned_by_the_service_its_events_name_as_source() {
        for domain in Domain::ALL {
            assert_eq!(Component::owner(domain).name(), domain.source());
        }
    }
}
