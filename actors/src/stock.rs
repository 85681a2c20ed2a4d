//! Stock split by SKU: what the warehouse and the stores share.
//!
//! "Never oversell" needs one writer per SKU, not per order. With more than one partition,
//! inventory and the stores run one shard per partition, and shard `k` keeps the stock of the
//! SKUs whose partition is `k` ([`Shard`]). An order's lines may then span shards, and they are
//! reserved shard by shard, in a chain, in the order of the shards' indexes:
//!
//! ```text
//! PaymentApproved ─► first shard: its lines ─► InventoryLinesReserved ─► next shard … ─►
//!     last shard: its lines ─► InventoryReserved (the order's outcome)
//! any shard short ─► InventoryShortage (the outcome) ─► the shards before it release theirs
//! ```
//!
//! Each shard decides its own lines alone, exactly; the outcome is decided once, by the shard
//! that reserves the last lines or finds one short. An order within one shard (and every order
//! while stock is not split) goes as before: one event, `InventoryReserved` or
//! `InventoryShortage`. The stores chain the same way (`StoreLinesReserved`), every shard at the
//! store the first one chose.

use crate::catalog::Line;
use crate::engine::Shard;

/// Does an order of `skus` concern `shard` (or the whole stock, `None`)? Unknown SKUs (an
/// older event names none): it may.
pub fn concerns(shard: Option<Shard>, skus: &[String]) -> bool {
    match shard {
        Some(shard) => skus.is_empty() || skus.iter().any(|sku| shard.holds(sku)),
        None => true,
    }
}

/// An order's lines, as one shard (or the whole stock, `None`) sees them.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a> {
    lines: &'a [Line],
    shard: Option<Shard>,
}

impl<'a> Chain<'a> {
    pub fn new(lines: &'a [Line], shard: Option<Shard>) -> Chain<'a> {
        Chain { lines, shard }
    }

    /// The lines this shard keeps the stock of.
    pub fn own(&self) -> Vec<Line> {
        self.lines
            .iter()
            .filter(|l| self.shard.is_none_or(|s| s.holds(&l.sku)))
            .cloned()
            .collect()
    }

    /// Does this shard reserve first (the order's event starts the chain here)?
    pub fn is_first(&self) -> bool {
        self.shard
            .is_none_or(|s| self.shards().first() == Some(&s.index))
    }

    /// Does this shard reserve last (and so decide the order's outcome)?
    pub fn is_last(&self) -> bool {
        self.shard
            .is_none_or(|s| self.shards().last() == Some(&s.index))
    }

    /// Is this shard the next after the one that reserved `reserved`?
    pub fn follows(&self, reserved: &[Line]) -> bool {
        let (Some(shard), Some(line)) = (self.shard, reserved.first()) else {
            return false;
        };
        let before = Shard::of(&line.sku, shard.count);
        let shards = self.shards();
        shards
            .iter()
            .position(|k| *k == before)
            .and_then(|at| shards.get(at + 1))
            == Some(&shard.index)
    }

    /// The shards the lines span, in order.
    fn shards(&self) -> Vec<u32> {
        let Some(shard) = self.shard else {
            return Vec::new();
        };
        let mut shards: Vec<u32> = self
            .lines
            .iter()
            .map(|l| Shard::of(&l.sku, shard.count))
            .collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::lines;

    fn shard(index: u32) -> Option<Shard> {
        Some(Shard { index, count: 2 })
    }

    #[test]
    fn an_order_across_two_shards_is_reserved_first_by_the_lower_one() {
        // SKU-MUG is in shard 0 of two, SKU-TSHIRT in shard 1 (FNV-1a, as the broker's).
        assert_eq!(Shard::of("SKU-MUG", 2), 0);
        assert_eq!(Shard::of("SKU-TSHIRT", 2), 1);
        let both = lines(&[("SKU-TSHIRT", 1), ("SKU-MUG", 2)]);
        let (zero, one) = (Chain::new(&both, shard(0)), Chain::new(&both, shard(1)));
        assert!(zero.is_first() && !zero.is_last());
        assert!(!one.is_first() && one.is_last());
        assert_eq!(zero.own(), lines(&[("SKU-MUG", 2)]));
        assert!(one.follows(&zero.own()));
        assert!(!zero.follows(&one.own()));
        assert!(!one.follows(&one.own()));
    }

    #[test]
    fn within_one_shard_or_unsplit_a_shard_is_first_and_last() {
        let mugs = lines(&[("SKU-MUG", 1), ("SKU-SOCKS", 1)]);
        let zero = Chain::new(&mugs, shard(0));
        assert!(zero.is_first() && zero.is_last());
        assert_eq!(zero.own().len(), 2);
        // Shard 1 keeps none of them: it never starts, never follows.
        let one = Chain::new(&mugs, shard(1));
        assert!(!one.is_first() && one.own().is_empty());
        assert!(!one.follows(&zero.own()));
        let skus = ["SKU-MUG".to_string()];
        assert!(concerns(shard(0), &skus) && !concerns(shard(1), &skus));
        assert!(concerns(shard(1), &[]) && concerns(None, &skus));
        let whole = Chain::new(&mugs, None);
        assert!(whole.is_first() && whole.is_last() && !whole.follows(&mugs));
        assert_eq!(whole.own(), mugs);
    }
}
