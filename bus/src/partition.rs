//! Partitions: the stored subject of every domain event ends in its order's partition, so one
//! consumer can take one partition's events, in order, by its filter alone.
//!
//! Publishers do not choose it. An event is published on `<domain>.<event_name>.<order_id>`, and
//! the domain's stream stores it on `<domain>.<event_name>.<order_id>.<partition>`: a subject
//! transform of the stream, with the broker's own `partition()` (FNV-1a of the order id, modulo
//! the count). The count lives in the stream's configuration ([`crate::provision`] refuses to
//! change it under stored events), and [`Partitions::of`] computes the same function here, so
//! a client can send a request about an order to the partition's owner.

use async_nats::jetstream::stream::SubjectTransform;

use crate::envelope::Domain;
use crate::BusError;

/// How many partitions every domain stream's events are spread over (at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitions(u32);

impl Partitions {
    /// One partition: every event in partition 0.
    pub const ONE: Partitions = Partitions(1);
    /// Beyond any sensible count (each partition would be a lease, a database and consumers).
    pub const MAX: u32 = 1024;

    pub fn new(count: u32) -> Result<Partitions, BusError> {
        if !(1..=Self::MAX).contains(&count) {
            return Err(BusError::Invalid(format!(
                "the partition count must be within 1..={}, not {count}",
                Self::MAX
            )));
        }
        Ok(Partitions(count))
    }

    pub fn count(self) -> u32 {
        self.0
    }

    /// The partition of `order_id`: nats-server's `partition()` (32-bit FNV-1a of the token's
    /// bytes, modulo the count).
    pub fn of(self, order_id: &str) -> u32 {
        let hash = order_id.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        });
        hash % self.0
    }

    /// The transform by which `domain`'s stream appends the partition to its events' subjects.
    /// Only three-token subjects (events) match; a term marker (two tokens) is stored as is.
    pub fn transform(self, domain: Domain) -> SubjectTransform {
        let prefix = domain.subject_prefix();
        SubjectTransform {
            source: format!("{prefix}.*.*"),
            destination: format!(
                "{prefix}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({},2)}}}}",
                self.0
            ),
        }
    }

    /// The count a stream's transform spreads events over, if it is one of ours.
    pub fn of_transform(domain: Domain, transform: &SubjectTransform) -> Option<Partitions> {
        (1..=Self::MAX)
            .map(Partitions)
            .find(|p| p.transform(domain) == *transform)
    }
}

/// Which partitions a subject filter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    All,
    One(u32),
}

impl Slice {
    fn token(self) -> String {
        match self {
            Slice::All => "*".into(),
            Slice::One(partition) => partition.to_string(),
        }
    }
}

/// The stored subjects of `domain`'s `event_name` events (snake case; `*` for every event), of
/// every order in `slice`.
pub fn events(domain: Domain, event_name: &str, slice: Slice) -> String {
    format!(
        "{}.{event_name}.*.{}",
        domain.subject_prefix(),
        slice.token()
    )
}

/// The stored subjects of `domain`'s events about `order_id`.
pub fn of_order(domain: Domain, order_id: &str) -> String {
    format!("{}.*.{order_id}.*", domain.subject_prefix())
}

/// A stored event subject, split into the subject it was published on and its partition.
pub fn split_stored(subject: &str) -> Option<(&str, u32)> {
    let (published, partition) = subject.rsplit_once('.')?;
    let partition = partition.parse().ok()?;
    (published.split('.').count() == 3).then_some((published, partition))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_1a_as_the_broker_hashes() {
        // FNV-1a 32 reference values (the broker's test vectors use the same function).
        let hash = |s: &str| Partitions(u32::MAX).of(s);
        assert_eq!(hash(""), 0x811c_9dc5);
        assert_eq!(hash("a"), 0xe40c_292c);
        assert_eq!(hash("foobar"), 0xbf9c_f968);
        for id in ["o1", "0193a5b0-7c1e-7000-8000-000000000001"] {
            assert_eq!(Partitions::ONE.of(id), 0);
            assert!(Partitions(4).of(id) < 4);
        }
    }

    #[test]
    fn subjects_and_transforms() {
        let four = Partitions::new(4).unwrap();
        let t = four.transform(Domain::Orders);
        assert_eq!(t.source, "orders.*.*");
        assert_eq!(
            t.destination,
            "orders.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(4,2)}}"
        );
        assert_eq!(Partitions::of_transform(Domain::Orders, &t), Some(four));
        assert_eq!(Partitions::of_transform(Domain::Payments, &t), None);
        assert!(Partitions::new(0).is_err());
        assert!(Partitions::new(Partitions::MAX + 1).is_err());
        assert!(crate::term::is_term_subject("orders.term_0"));
        assert!(!crate::term::is_term_subject("orders.order_placed.o1.0"));

        assert_eq!(
            events(Domain::Payments, "payment_approved", Slice::One(3)),
            "payments.payment_approved.*.3"
        );
        assert_eq!(events(Domain::Orders, "*", Slice::All), "orders.*.*.*");
        assert_eq!(of_order(Domain::Orders, "o1"), "orders.*.o1.*");
        assert_eq!(
            split_stored("orders.order_placed.o1.2"),
            Some(("orders.order_placed.o1", 2))
        );
        for not_stored in [
            "orders.order_placed.o1",
            "orders.term_0",
            "a.b.c.d.1",
            "a.b.c.x",
        ] {
            assert_eq!(split_stored(not_stored), None, "{not_stored}");
        }
    }
}
