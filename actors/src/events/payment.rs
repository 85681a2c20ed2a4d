use bus::Domain;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::Line;
use crate::codec::DomainEvent;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum PaymentEvent {
    PaymentApproved {
        amount_cents: u64,
        payment_method: String,
        authorization_id: String,
        approved_at: DateTime<Utc>,
        /// Carried on for inventory and shipment.
        lines: Vec<Line>,
        shipping_address: String,
    },
    PaymentDeclined {
        amount_cents: u64,
        reason: String,
    },
    /// The gateway stayed unavailable past the saga's deadline: the order is given up. An
    /// earlier attempt may still have charged the card, so this service voids it (authorize
    /// by the same key, then refund) once the gateway is back.
    PaymentAbandoned {
        amount_cents: u64,
        payment_token: String,
        reason: String,
    },
    /// The order was cancelled before its payment was made (its `OrderCreated` is waiting for a
    /// retry): a later authorization is refunded at once.
    PaymentVoided {
        reason: String,
    },
    /// The compensation: the authorization is voided / the charge refunded.
    PaymentRefunded {
        amount_cents: u64,
        refund_id: String,
        reason: String,
    },
    /// The order shipped, so nothing can cancel it and nothing will refund this payment: it is
    /// final, and the service stops tracking it (a snapshot replaces its events).
    PaymentClosed {},
}

impl DomainEvent for PaymentEvent {
    const DOMAIN: Domain = Domain::Payments;
}
