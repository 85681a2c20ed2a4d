//! The seeded catalog (reference data every service may read) and the domain's value types.
//!
//! Deterministic triggers for tests and demos, in the manner of payment providers' test cards:
//! - card [`DECLINED_CARD`] is tokenized like any card, then declined by the payment gateway;
//! - a shipping address containing [`UNDELIVERABLE`] is rejected by the carrier;
//! - a shipping address containing [`HOLD`] is booked but never picked up (so it can be cancelled);
//! - `SKU-POSTER` is in no warehouse, only in a store (ship-from-store);
//! - `SKU-VINYL` is nowhere (refund, cancel);
//! - `SKU-LAMP` has 5 units in the warehouse and none in stores (the last units).

use serde::{Deserialize, Serialize};

use crate::rpc::DomainError;

pub const DECLINED_CARD: &str = "4000000000000002";
pub const UNDELIVERABLE: &str = "undeliverable";
pub const HOLD: &str = "[hold]";

pub const MAX_LINES: usize = 20;
pub const MAX_QUANTITY: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Product {
    pub sku: &'static str,
    pub name: &'static str,
    pub price_cents: u64,
    /// Units in the warehouse at first start.
    pub warehouse: u32,
    /// Units per offline store at first start.
    pub stores: &'static [(&'static str, u32)],
}

pub const STORES: [&str; 2] = ["store-seoul", "store-busan"];

pub const PRODUCTS: &[Product] = &[
    Product {
        sku: "SKU-TSHIRT",
        name: "Organic T-shirt",
        price_cents: 1_999,
        warehouse: 10_000,
        stores: &[("store-seoul", 50), ("store-busan", 50)],
    },
    Product {
        sku: "SKU-MUG",
        name: "Enamel mug",
        price_cents: 1_250,
        warehouse: 10_000,
        stores: &[("store-seoul", 40)],
    },
    Product {
        sku: "SKU-SOCKS",
        name: "Wool socks",
        price_cents: 899,
        warehouse: 10_000,
        stores: &[("store-busan", 80)],
    },
    Product {
        sku: "SKU-HOODIE",
        name: "Zip hoodie",
        price_cents: 4_999,
        warehouse: 5_000,
        stores: &[("store-seoul", 10)],
    },
    Product {
        sku: "SKU-POSTER",
        name: "Screen-printed poster (store only)",
        price_cents: 1_500,
        warehouse: 0,
        stores: &[("store-busan", 1_000)],
    },
    Product {
        sku: "SKU-VINYL",
        name: "Limited vinyl (sold out)",
        price_cents: 2_999,
        warehouse: 0,
        stores: &[],
    },
    Product {
        sku: "SKU-LAMP",
        name: "Desk lamp (last units)",
        price_cents: 8_999,
        warehouse: 5,
        stores: &[],
    },
];

pub fn product(sku: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.sku == sku)
}

/// One line of an order, priced from the catalog when the order is placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: u64,
}

/// What a customer sends over HTTP: a payment token (as a card form tokenizes in the browser)
/// or, for convenience, a card number, which the HTTP gateway exchanges for a token at once so
/// that it never reaches the rest of the system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderForm {
    /// Whose order: a customer's token says it (this may then be left out); an operator names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    pub lines: Vec<LineRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_number: Option<String>,
    pub shipping_address: String,
}

impl OrderForm {
    /// The order service's request: `customer`'s, paid with `payment`.
    pub fn paid_with(self, customer: String, payment: PaymentMethod) -> OrderRequest {
        OrderRequest {
            customer,
            lines: self.lines,
            payment,
            shipping_address: self.shipping_address,
        }
    }
}

/// A card as the payment gateway tokenized it: the token to charge, and what may be shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethod {
    pub token: String,
    pub brand: String,
    pub last4: String,
}

/// The digits of a card number a customer typed (spaces and dashes allowed), or why not.
pub fn card_digits(raw: &str) -> Result<String, DomainError> {
    let digits = raw.replace([' ', '-'], "");
    if looks_like_a_card(&digits) {
        Ok(digits)
    } else {
        Err(DomainError::rejected("card_number must be 12 to 19 digits"))
    }
}

fn looks_like_a_card(text: &str) -> bool {
    (12..=19).contains(&text.len()) && text.chars().all(|c| c.is_ascii_digit())
}

/// What the order service takes: the payment is a token, never a card number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub customer: String,
    pub lines: Vec<LineRequest>,
    pub payment: PaymentMethod,
    pub shipping_address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    pub sku: String,
    /// Signed so that a negative quantity is reported as such, not as a type error.
    pub quantity: i64,
}

/// A validated order request: known SKUs, sane quantities, priced lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub customer: String,
    pub lines: Vec<Line>,
    pub total_cents: u64,
    pub payment: PaymentMethod,
    pub shipping_address: String,
}

impl PlaceOrder {
    pub fn parse(request: OrderRequest) -> Result<PlaceOrder, DomainError> {
        let text = |what: &str, value: &str, max: usize| {
            let value = value.trim();
            if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
                Err(DomainError::rejected(format!(
                    "{what} must be 1 to {max} printable characters"
                )))
            } else {
                Ok(value.to_string())
            }
        };
        let customer = text("customer", &request.customer, 100)?;
        let shipping_address = text("shipping_address", &request.shipping_address, 300)?;
        let payment = request.payment;
        let token_ok = (1..=100).contains(&payment.token.len())
            && payment.token.chars().all(|c| c.is_ascii_graphic())
            // A card number where a token belongs would put it into every event.
            && !looks_like_a_card(&payment.token);
        let last4_ok =
            payment.last4.len() == 4 && payment.last4.chars().all(|c| c.is_ascii_digit());
        let brand_ok = (1..=20).contains(&payment.brand.len())
            && payment
                .brand
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !(token_ok && last4_ok && brand_ok) {
            return Err(DomainError::rejected(
                "payment must be a payment gateway token with its brand and last 4 digits",
            ));
        }
        if request.lines.is_empty() || request.lines.len() > MAX_LINES {
            return Err(DomainError::rejected(format!(
                "an order has 1 to {MAX_LINES} lines"
            )));
        }
        let mut lines: Vec<Line> = Vec::with_capacity(request.lines.len());
        for line in request.lines {
            let product = product(&line.sku)
                .ok_or_else(|| DomainError::rejected(format!("unknown sku {:?}", line.sku)))?;
            let quantity = u32::try_from(line.quantity)
                .ok()
                .filter(|q| (1..=MAX_QUANTITY).contains(q))
                .ok_or_else(|| {
                    DomainError::rejected(format!(
                        "quantity of {} must be 1 to {MAX_QUANTITY}, got {}",
                        line.sku, line.quantity
                    ))
                })?;
            match lines.iter_mut().find(|l| l.sku == product.sku) {
                Some(existing) => {
                    existing.quantity += quantity;
                    if existing.quantity > MAX_QUANTITY {
                        return Err(DomainError::rejected(format!(
                            "quantity of {} must be at most {MAX_QUANTITY} in total",
                            product.sku
                        )));
                    }
                }
                None => lines.push(Line {
                    sku: product.sku.to_string(),
                    quantity,
                    unit_price_cents: product.price_cents,
                }),
            }
        }
        // Bounded by the catalog's prices, MAX_QUANTITY and MAX_LINES; checked all the same.
        let total_cents = lines
            .iter()
            .try_fold(0u64, |total, l| {
                l.unit_price_cents
                    .checked_mul(u64::from(l.quantity))
                    .and_then(|line| total.checked_add(line))
            })
            .ok_or_else(|| DomainError::rejected("the order's total is too large"))?;
        Ok(PlaceOrder {
            customer,
            lines,
            total_cents,
            payment,
            shipping_address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(sku: &str, quantity: i64) -> OrderRequest {
        OrderRequest {
            customer: "alice".into(),
            lines: vec![LineRequest {
                sku: sku.into(),
                quantity,
            }],
            payment: PaymentMethod {
                token: "tok_1".into(),
                brand: "visa".into(),
                last4: "4242".into(),
            },
            shipping_address: "1 Main St".into(),
        }
    }

    #[test]
    fn a_valid_request_is_priced_from_the_catalog() {
        let mut r = request("SKU-MUG", 2);
        r.lines.push(LineRequest {
            sku: "SKU-MUG".into(),
            quantity: 1,
        });
        let order = PlaceOrder::parse(r).unwrap();
        assert_eq!(order.lines.len(), 1, "same sku lines merge");
        assert_eq!(order.lines[0].quantity, 3);
        assert_eq!(order.total_cents, 3 * 1_250);
        assert_eq!(order.payment.token, "tok_1");
    }

    #[test]
    fn card_numbers_are_digits_only() {
        assert_eq!(
            card_digits("4242 4242-4242 4242").unwrap(),
            "4242424242424242"
        );
        for bad in ["12ab", "4242", "42424242424242424242"] {
            assert!(card_digits(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (r, needle) in [
            (request("SKU-NOPE", 1), "unknown sku"),
            (request("SKU-MUG", 0), "quantity"),
            (request("SKU-MUG", -3), "got -3"),
            (request("SKU-MUG", 1_000_000_000_000), "quantity"),
            (
                OrderRequest {
                    payment: PaymentMethod {
                        token: "4242424242424242".into(),
                        brand: "visa".into(),
                        last4: "4242".into(),
                    },
                    ..request("SKU-MUG", 1)
                },
                "payment",
            ),
            (
                OrderRequest {
                    customer: " ".into(),
                    ..request("SKU-MUG", 1)
                },
                "customer",
            ),
            (
                OrderRequest {
                    lines: vec![],
                    ..request("SKU-MUG", 1)
                },
                "lines",
            ),
        ] {
            let err = PlaceOrder::parse(r).unwrap_err();
            assert!(matches!(err, DomainError::Rejected(_)), "{err:?}");
            assert!(
                err.message().contains(needle),
                "{err:?} should mention {needle}"
            );
        }
    }
}
