//! Where a request goes. A service that keeps its state per order is split by the streams'
//! partitions once there is more than one (`streams.partitions`): partition `k` of it answers on
//! `commerce.<component>.<k>.<endpoint>`, about the orders of partition `k` only. A service
//! that keeps stock is split the same way by SKU ([`crate::stock`]): partition `k` answers about
//! its SKUs, and takes part in every order. Every other component, and every service while there
//! is one partition, answers on `commerce.<component>.<endpoint>`.

use std::fmt;

use bus::Partitions;

use super::Component;

/// Who answers: a component, or one partition of a split service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub component: Component,
    pub partition: Option<u32>,
}

impl Address {
    /// The component as a whole (not split).
    pub fn whole(component: Component) -> Address {
        Address {
            component,
            partition: None,
        }
    }

    /// Whose dead letters are filed under `owner`: a component (`payment`), or one shard of
    /// split stock (`inventory-p1`, [`crate::engine::host::consume::dead_letter_owner`]).
    pub fn of_dead_letters(owner: &str) -> Option<Address> {
        if let Ok(component) = owner.parse::<Component>() {
            return Some(Address::whole(component));
        }
        let (name, k) = owner.rsplit_once("-p")?;
        let component = name.parse::<Component>().ok()?;
        Some(Address {
            component,
            partition: Some(k.parse().ok()?),
        })
        .filter(|_| component.keeps_stock())
    }

    /// Its micro service's group: `commerce.<component>` or `commerce.<component>.<k>`.
    pub fn group(self) -> String {
        match self.partition {
            None => format!("commerce.{}", self.component),
            Some(k) => format!("commerce.{}.{k}", self.component),
        }
    }

    /// The subject of its endpoint `endpoint`.
    pub fn subject(self, endpoint: &str) -> String {
        format!("{}.{endpoint}", self.group())
    }
}

/// `payment`, or `payment/2` for partition 2 of a split payment service.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.partition {
            None => write!(f, "{}", self.component),
            Some(k) => write!(f, "{}/{k}", self.component),
        }
    }
}

/// Which components are split, and where a request about an order goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routes(Partitions);

impl Routes {
    pub const fn new(partitions: Partitions) -> Routes {
        Routes(partitions)
    }

    /// The routes the streams say: their partition count (one, if unknown).
    pub fn of_streams(streams: &[bus::status::StreamStatus]) -> Routes {
        let orders = streams
            .iter()
            .find(|s| s.name == bus::Domain::Orders.stream())
            .and_then(|s| s.partitions)
            .and_then(|count| Partitions::new(count).ok());
        Routes(orders.unwrap_or(Partitions::ONE))
    }

    /// The routes of the system on the broker `js` reaches: its streams' partition count (for a
    /// client that did not start the system, and so has no say in it).
    pub async fn of_broker(js: &async_nats::jetstream::Context) -> Result<Routes, bus::BusError> {
        let orders = bus::Domain::Orders.stream();
        let what = || format!("partitions of {orders} (has `commerce up` run?)");
        let mut stream = js
            .get_stream(orders)
            .await
            .map_err(|e| bus::BusError::jetstream(what())(e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| bus::BusError::jetstream(what())(e))?;
        let partitions = info
            .config
            .subject_transform
            .as_ref()
            .and_then(|t| Partitions::of_transform(bus::Domain::Orders, t));
        Ok(Routes(partitions.unwrap_or(Partitions::ONE)))
    }

    pub fn partitions(self) -> Partitions {
        self.0
    }

    /// Is `component` split into one answerer per partition?
    pub fn splits(self, component: Component) -> bool {
        (component.keeps_orders() || component.keeps_stock()) && self.0.count() > 1
    }

    /// Who answers `component`'s requests about `order_id`: its partition's host, or the
    /// whole; every shard of a service split by SKU ([`Routes::all`]).
    pub fn about_order(self, component: Component, order_id: &str) -> Vec<Address> {
        if component.keeps_stock() {
            return self.all(component);
        }
        vec![self.of_order(component, order_id)]
    }

    /// The host that keeps `order_id` of `component`: its partition's, or the whole (of a
    /// service not split by SKU).
    pub fn of_order(self, component: Component, order_id: &str) -> Address {
        let split = self.splits(component) && component.keeps_orders();
        Address {
            component,
            partition: split.then(|| self.0.of(order_id.trim())),
        }
    }

    /// Every answerer of `component`: the whole, or each partition.
    pub fn all(self, component: Component) -> Vec<Address> {
        if !self.splits(component) {
            return vec![Address::whole(component)];
        }
        (0..self.0.count())
            .map(|k| Address {
                component,
                partition: Some(k),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_that_keep_orders_or_stock_split_and_only_over_several_partitions() {
        let one = Routes::new(Partitions::ONE);
        let three = Routes::new(Partitions::new(3).unwrap());
        let id = "0193a5b0-7c1e-7000-8000-000000000001";
        assert_eq!(
            one.of_order(Component::Payment, id),
            Address::whole(Component::Payment)
        );
        assert_eq!(one.all(Component::Order).len(), 1);
        let at = three.of_order(Component::Payment, id);
        assert_eq!(at.partition, Some(Partitions::new(3).unwrap().of(id)));
        assert_eq!(
            at.subject("get"),
            format!("commerce.payment.{}.get", at.partition.unwrap())
        );
        assert_eq!(three.all(Component::Shipment).len(), 3);
        let shard = Address::of_dead_letters("inventory-p2").unwrap();
        assert_eq!(
            (shard.component, shard.partition),
            (Component::Inventory, Some(2))
        );
        assert_eq!(
            Address::of_dead_letters("payment"),
            Some(Address::whole(Component::Payment))
        );
        assert_eq!(Address::of_dead_letters("payment-p1"), None);
        assert_eq!(Address::of_dead_letters("store-px"), None);
        // Stock is split by SKU: every shard takes part in every order.
        assert_eq!(three.about_order(Component::Inventory, id).len(), 3);
        assert_eq!(three.all(Component::Store).len(), 3);
        assert_eq!(one.about_order(Component::Store, id).len(), 1);
        for whole in [Component::Recommendation, Component::Projection] {
            assert_eq!(three.about_order(whole, id), [Address::whole(whole)]);
            assert_eq!(
                Address::whole(whole).subject("status"),
                format!("commerce.{whole}.status")
            );
        }
    }
}
